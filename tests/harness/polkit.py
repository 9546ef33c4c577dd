"""A REAL polkitd (the suite's: 122, 126, 128) on a private dbus-daemon, for tests.

``dbus-daemon`` runs with a system-bus-like configuration listening on a socket of
the test's choice (by default SCRATCH/bus; tests/test_acl_libvirtd.py puts it at
LIBVIRTD_SCRATCH/run/dbus/system_bus_socket, which is /run/dbus/system_bus_socket
inside a private libvirtd's mount namespace). ``polkitd`` runs in a private mount
namespace where /etc/polkit-1/rules.d is SCRATCH/rules and /etc/group is
SCRATCH/group (a copy of the host's with a ``libvirt`` line of the test's choice).
The host's /etc/polkit-1, /etc/group, /run/dbus and /var/lib/polkit-1 are never
touched; ``stop()`` ends both daemons (process groups of their own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from tests.harness.procs import PATH
from virtdeb.commands.acl import RULES_FILE

POLKITD = "/usr/lib/polkit-1/polkitd"
TOOLS = ("dbus-daemon", "dbus-send", "pkcheck", "setpriv", "unshare")
TEST_USERS = ("daemon", "bin", "sys", "games", "man")
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def skip_reason() -> str | None:
    """Why a private polkitd cannot run here, or None."""
    if os.geteuid() != 0:
        return "polkitd in a private mount namespace needs root"
    for tool in TOOLS:
        if shutil.which(tool, path=PATH) is None:
            return f"{tool} not installed (dbus, pkexec/polkitd, util-linux)"
    if not Path(POLKITD).exists():
        return "polkitd not installed"
    for user in TEST_USERS:
        if subprocess.run(["id", user], capture_output=True, env={"PATH": PATH},
                          check=False).returncode != 0:
            return f"no user {user!r} (base-passwd) to play an unprivileged user"
    return None


class Polkit:
    """dbus-daemon on BUS_SOCKET (default SCRATCH/bus) and polkitd on that bus."""

    def __init__(self, scratch: Path, bus_socket: Path | None = None) -> None:
        self.scratch = scratch
        self.bus_socket = bus_socket or scratch / "bus"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": PATH, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus_socket}"}

    def start(self, rules: bytes, libvirt_members: list[str],
              bus_socket: Path | None = None) -> None:
        """Both daemons, polkitd with RULES as virtdeb's rules file; BUS_SOCKET replaces the
        socket given to the constructor (e.g. once a libvirtd scratch directory exists)."""
        s = self.scratch
        if bus_socket is not None:
            self.bus_socket = bus_socket
        os.chmod(s, 0o755)  # polkitd drops to user polkitd and must reach the socket
        self.bus_socket.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        (s / "rules").mkdir()
        (s / "rules" / PurePosixPath(RULES_FILE).name).write_bytes(rules)
        lines = [line for line in Path("/etc/group").read_text().splitlines()
                 if not line.startswith("libvirt:")]
        (s / "group").write_text("\n".join(lines + [f"libvirt:x:4242:{','.join(libvirt_members)}"])
                                 + "\n")
        os.chmod(s / "group", 0o644)
        (s / "bus.conf").write_text(BUS_CONF.format(socket=self.bus_socket))
        self._spawn(["dbus-daemon", f"--config-file={s}/bus.conf", "--nofork", "--nopidfile"])
        self._wait(self.bus_socket.is_socket, "dbus-daemon socket")
        script = (f"mount --bind {s}/rules /etc/polkit-1/rules.d && "
                  f"mount --bind {s}/group /etc/group && exec {POLKITD}")
        self._spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                    log=s / "polkitd.log")
        self._wait(self._polkitd_on_bus, "polkitd")

    def _polkitd_on_bus(self) -> bool:
        """Whether polkitd owns its name on the bus: asked of dbus-daemon, since polkitd's
        own log lines differ between versions (128 no longer logs "Acquired the name")."""
        proc = subprocess.run(["dbus-send", f"--bus=unix:path={self.bus_socket}", "--print-reply",
                               "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus.NameHasOwner",
                               "string:org.freedesktop.PolicyKit1"], env=self.env,
                              capture_output=True, text=True, check=False, timeout=10)
        return proc.returncode == 0 and "boolean true" in proc.stdout

    def _spawn(self, argv: list[str], log: Path | None = None) -> None:
        with open(log or os.devnull, "wb") as out:  # the child keeps its own copy
            self.procs.append(subprocess.Popen(argv, env=self.env, stdout=out,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if ready():
                    return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up: {self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.scratch / "polkitd.log").read_text()
        return ""

    def pids(self) -> list[int]:
        """Pids of dbus-daemon and polkitd (the unshare'd sh execs polkitd) still running."""
        return [p.pid for p in self.procs if p.poll() is None]

    def allowed(self, user: str, action: str, domain: str | None = None) -> bool:
        """pkcheck for a process running as USER (a host user: polkitd resolves it)."""
        subject = subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}",
                                    "--clear-groups", "sleep", "30"], env=self.env)
        try:
            time.sleep(0.05)
            detail = ["--detail", "domain_name", domain] if domain is not None else []
            proc = subprocess.run(["pkcheck", "--action-id", action, "--process",
                                   str(subject.pid), *detail], env=self.env,
                                  capture_output=True, text=True, check=False)
        finally:
            subject.kill()
            subject.wait()
        if "is not registered" in proc.stderr:
            # polkitd >= 126 decides nothing on an action no .policy file registers (an
            # error, exit 127); 122 says "not authorized" (exit 1): not allowed either way
            return False
        assert proc.returncode in (0, 1, 2), proc.stderr + self.log()  # 2: needs a password
        return proc.returncode == 0

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextlib.contextmanager
def private_polkit(bus_socket: Path | None = None) -> Iterator[Polkit]:
    """A Polkit (not started yet) in its own scratch directory; stopped and removed after.

    The scratch directory is not under pytest's tmp_path: that is 0700 and polkitd runs
    as user polkitd.
    """
    scratch = Path(tempfile.mkdtemp(prefix="vdtest-polkit-"))
    pk = Polkit(scratch, bus_socket)
    try:
        yield pk
    finally:
        pk.stop()
        shutil.rmtree(scratch, ignore_errors=True)
