"""A booted Debian system for tests: systemd as PID 1 in ``systemd-nspawn``.

How it works
------------
``BootedSystem(image)`` makes a scratch directory ``<tmp>/vdboot-<ownerpid>-<hex>/``::

    upper/ work/   the overlay's writable layer (every change of every boot lands here)
    root/          where the overlay is mounted (inside a private mount namespace only)
    console-N.log  what nspawn and the container's console printed during boot N
    inits          "PID STARTTIME" of every nspawn and container init (for the sweep)

and ``boot()`` runs, in a new private mount namespace (``unshare -m --propagation
private``), ``mount -t overlay`` of IMAGE (lower, never written) with upper/ on root/, then
``exec systemd-nspawn -D root --boot --private-network --register=no --keep-unit
--console=pipe`` with ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`` in its environment (sid's
systemd refuses the host's hybrid cgroup layout otherwise; bookworm's and trixie's accept
it too). ``--register=no --keep-unit``: the host has no systemd (no machined, no bus).
nspawn gives the container its own /dev (a tmpfs with the few nodes it allows); the host's
/dev is never bound. The container's network is its own (``lo`` only): it reaches no
mirror, so what a story installs must already be in the image. Before the first boot the
harness writes a fresh ``/etc/machine-id`` into upper/ (the persistent journal of the
image, /var/log/journal, is then one directory across reboots, and no first-boot units run).

The container's PID 1 (systemd) is the grandchild of the nspawn process; the harness
finds it as the descendant of nspawn whose ``NSpid`` is ``<hostpid> 1``. ``run(cmd)``
runs ``nsenter -t PID1 -a`` (every namespace of the container; the process is in the
container's pid namespace, so it dies with it at the latest) with a clean environment,
as root or, with ``user=NAME``, through ``runuser -u NAME`` (util-linux) inside.
``root_view`` (``/proc/PID1/root``) shows the container's files to the host while it runs.

``boot()`` waits until ``systemctl is-system-running`` says ``running``, or ``degraded``
when every failed unit is in ``allow_failed`` (unit -> the reason it cannot work in a
container); any other failed unit, or nspawn exiting, is an error naming the units and
the end of the console log. ``reboot()`` runs the system's own ``systemctl reboot``,
waits for nspawn to end (it exits 133 on a reboot) and boots the same overlay again.
``journal(boot=0|-1, unit=...)`` reads ``journalctl -b``.

Teardown (``stop()``, ``__exit__``, also on exceptions and KeyboardInterrupt, idempotent):
SIGTERM to nspawn (nspawn then asks the container's systemd to power off), SIGKILL to
nspawn and the container's PID 1 after ``STOP_WAIT`` s (killing a pid namespace's init
kills every process in it, and the init's exit waits for them), wait until the init (by
pid and start time) is gone, then remove the system's cgroups and the scratch directory.
(nspawn with ``--keep-unit`` makes its ``payload`` and ``supervisor`` cgroups next to itself, in the
host's ``name=systemd`` v1 hierarchy and in ``unified``; so the boot script first moves
itself into ``vdboot-...`` cgroups of its own, removed at the end.) The overlay mount
lives only in the mount namespaces of nspawn and the container: the kernel drops it with
their last process.
Safety nets: a ``weakref.finalize`` (interpreter exit), and at every start a sweep of
``vdboot-<pid>-*`` scratch directories whose owner pid is dead (a SIGKILLed pytest): it
SIGKILLs only the nspawn and init processes recorded there whose pid AND start time still
match. Processes are never looked up by pid namespace: a freed namespace's inode number
can be reused by a later namespace (a first version did so; once, right after a clean
stop, it found 4 processes under a finished boot's pid namespace inode, none of them the
container's a moment later).
``leftovers()`` lists what is still there (processes, scratch, mounts naming it).

Measured on this machine kind (2 cores, Debian 12 host, nspawn 252), see the note of
tests/test_booted.py for the per-suite figures.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.procs import PATH, is_gone, starttime

PREFIX = "vdboot-"
_NAME_RE = re.compile(r"^vdboot-(\d+)-[0-9a-f]+$")
BOOT_TIMEOUT = 600.0  # seconds until `running`; a loaded 2-core machine is slow
STOP_WAIT = 90.0  # seconds for an orderly poweroff before SIGKILL
REBOOT_WAIT = 180.0  # seconds for `systemctl reboot` to end nspawn
NSPAWN_REBOOT_STATUS = 133  # systemd-nspawn's exit status when the container rebooted
# nspawn with --keep-unit makes its "payload" and "supervisor" cgroups beside itself, in
# the hierarchies systemd uses; the harness first moves it into a cgroup of its own there.
CGROUP_HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
CMD_ENV = ("env", "-i", f"PATH={PATH}", "LC_ALL=C.UTF-8", "TERM=dumb",
           "DEBIAN_FRONTEND=noninteractive")


class BootedError(RuntimeError):
    """The booted system could not be started, reached, rebooted or torn down."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _nspid(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def _alive(pid: int, start: str) -> bool:
    return not is_gone(pid) and starttime(pid) == start


def _kill(pid: int | None, sig: int) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class _State:
    """Everything teardown needs, without a reference to the BootedSystem (finalize)."""
    scratch: Path
    nspawn: subprocess.Popen[bytes] | None = None
    pid1: int | None = None
    pid1_start: str | None = None
    # (pid, start time) of every boot's nspawn and container init, for leftovers(); a
    # pid namespace's inode is reused once it is freed, so it is no lasting identity
    inits: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _halt(state: _State, wait: float = STOP_WAIT) -> None:
    """End the current boot: orderly if it can, SIGKILL after WAIT s."""
    proc = state.nspawn
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            state.notes.append(f"no poweroff within {wait:.0f} s: SIGKILL")
            _kill(state.pid1, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=30)
    # the container's init: when it is gone, so is every process of its pid namespace
    # (the kernel kills them and init's exit waits for them); never enumerate the
    # namespace by its inode, which a later namespace may reuse
    if state.pid1 is not None and state.pid1_start is not None:
        deadline = time.monotonic() + 30
        while _alive(state.pid1, state.pid1_start) and time.monotonic() < deadline:
            _kill(state.pid1, signal.SIGKILL)
            time.sleep(0.2)
        if _alive(state.pid1, state.pid1_start):
            state.notes.append(f"container init {state.pid1} survived SIGKILL for 30 s")
    state.nspawn = None
    state.pid1 = None
    state.pid1_start = None


def cgroup_dirs(name: str) -> list[Path]:
    """The cgroups of system NAME, one per hierarchy systemd uses on this host."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # a unified (v2 only) host
        return [Path("/sys/fs/cgroup", name)]
    return [Path(h, name) for h in CGROUP_HIERARCHIES if Path(h, "cgroup.procs").exists()]


def _remove_cgroups(name: str, wait: float = 10.0) -> list[str]:
    """rmdir the cgroups of NAME, deepest first (a cgroup empties shortly after its last
    process); return those that would not go."""
    deadline = time.monotonic() + wait
    while True:
        left = []
        for top in cgroup_dirs(name):
            if not top.exists():
                continue
            dirs = sorted((d for d, _sub, _files in os.walk(top)), key=len, reverse=True)
            for d in dirs:
                try:
                    os.rmdir(d)
                except OSError as exc:
                    left.append(f"{d}: {exc.strerror}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _finalize(state: _State) -> None:
    with contextlib.suppress(Exception):
        _halt(state, wait=10)
    _remove_cgroups(state.scratch.name)
    shutil.rmtree(state.scratch, ignore_errors=True)


def sweep(tmp: Path) -> list[str]:
    """Remove what a dead owner (a SIGKILLed pytest) left: its containers and scratch."""
    done = []
    with contextlib.suppress(OSError):
        for entry in tmp.iterdir():
            m = _NAME_RE.match(entry.name)
            if not m or not is_gone(int(m.group(1))):
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                # only processes that are provably ours: pid and start time as recorded
                for line in (entry / "inits").read_text().splitlines():
                    pid, start = line.split()
                    if _alive(int(pid), start):
                        _kill(int(pid), signal.SIGKILL)  # an init: its namespace goes too
            _remove_cgroups(entry.name)
            shutil.rmtree(entry, ignore_errors=True)
            done.append(str(entry))
    return done


class BootedSystem:
    """A Debian root booted with systemd in systemd-nspawn, over a throwaway overlay."""

    def __init__(self, image: Path, *, allow_failed: Mapping[str, str] | None = None,
                 tmp: Path | None = None) -> None:
        self.image = Path(image).resolve()
        if not any((self.image / init).exists() for init in ("sbin/init", "lib/systemd/systemd")):
            raise BootedError(f"{self.image} is not a bootable root (no init)")
        for tool in ("systemd-nspawn", "unshare", "nsenter", "mount"):
            if shutil.which(tool, path=PATH) is None:
                raise BootedError(f"{tool} is missing on the host (systemd-container, util-linux)")
        self.allow_failed = dict(allow_failed or {})
        tmp = Path(tmp or tempfile.gettempdir())
        self.swept = sweep(tmp)
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.scratch = tmp / self.name
        for sub in ("upper", "work", "root"):
            (self.scratch / sub).mkdir(parents=True)
        etc = self.scratch / "upper/etc"
        etc.mkdir()
        (etc / "machine-id").write_text(secrets.token_hex(16) + "\n")
        self.boots = 0
        self.boot_seconds: list[float] = []
        self._state = _State(self.scratch)
        self._finalizer = weakref.finalize(self, _finalize, self._state)

    # ------------------------------------------------------------------ state
    @property
    def pid1(self) -> int:
        if self._state.pid1 is None:
            raise BootedError("the system is not running")
        return self._state.pid1

    @property
    def running(self) -> bool:
        proc = self._state.nspawn
        return proc is not None and proc.poll() is None

    @property
    def root_view(self) -> Path:
        """The container's / as the host sees it while it runs."""
        return Path(f"/proc/{self.pid1}/root")

    @property
    def console_log(self) -> Path:
        return self.scratch / f"console-{self.boots}.log"

    @property
    def notes(self) -> list[str]:
        return list(self._state.notes)

    # ------------------------------------------------------------------ boot
    def boot(self, timeout: float = BOOT_TIMEOUT,
             expect_failed: Mapping[str, str] | None = None) -> float:
        """Boot the overlay; wait until systemd is up. Returns the seconds it took.
        EXPECT_FAILED: units allowed to fail at this boot only (unit -> why)."""
        if self.running:
            raise BootedError("already running")
        self.boots += 1
        start = time.monotonic()
        s = self.scratch
        cgroups = "".join(f"mkdir -p {d} && echo $$ > {d}/cgroup.procs && "
                          for d in cgroup_dirs(self.name))
        script = (f"{cgroups}mount -t overlay overlay -o lowerdir={shlex.quote(str(self.image))},"
                  f"upperdir={s}/upper,workdir={s}/work {s}/root && exec systemd-nspawn"
                  f" -D {s}/root --boot --private-network --register=no --keep-unit"
                  f" --console=pipe --machine={self.name.replace('vdboot-', 'vd')}")
        env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        with open(self.console_log, "wb") as log:
            proc = subprocess.Popen(  # noqa: S603
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        self._state.nspawn = proc
        self._remember(proc.pid)
        try:
            self._find_pid1(proc, start + 60)
            self._wait_up(start + timeout, {**self.allow_failed, **(expect_failed or {})})
        except BaseException:
            _halt(self._state, wait=20)
            raise
        seconds = time.monotonic() - start
        self.boot_seconds.append(seconds)
        return seconds

    def _find_pid1(self, proc: subprocess.Popen[bytes], deadline: float) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BootedError(f"systemd-nspawn exited {proc.returncode} while starting:\n"
                                  f"{_tail(self.console_log)}")
            todo = _children(proc.pid)
            while todo:
                pid = todo.pop()
                ns = _nspid(pid)
                if len(ns) == 2 and ns[1] == 1:
                    self._state.pid1 = pid
                    self._state.pid1_start = starttime(pid)
                    self._remember(pid)
                    return
                todo += _children(pid)
            time.sleep(0.1)
        raise BootedError(f"no container PID 1 under nspawn {proc.pid}:\n"
                          f"{_tail(self.console_log)}")

    def _remember(self, pid: int) -> None:
        """Record PID (nspawn, or the container's init) for leftovers() and the sweep."""
        start = starttime(pid)
        if start is not None:
            self._state.inits.append((pid, start))
            with open(self.scratch / "inits", "a") as f:
                f.write(f"{pid} {start}\n")

    def _wait_up(self, deadline: float, allowed: Mapping[str, str]) -> None:
        state = ""
        while time.monotonic() < deadline:
            if not self.running:
                raise BootedError(f"systemd-nspawn exited while booting (last state"
                                  f" {state!r}):\n{_tail(self.console_log)}")
            proc = self.run("systemctl is-system-running", check=False, timeout=60)
            state = proc.stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.failed_units()
                unexpected = [u for u in failed if u not in allowed]
                if unexpected:
                    raise BootedError(f"degraded: failed units {unexpected}:\n"
                                      + self.run(f"systemctl status --no-pager -n 20"
                                                 f" {shlex.join(unexpected)}",
                                                 check=False).stdout)
                for unit in failed:
                    self._state.notes.append(f"boot {self.boots}: {unit} failed"
                                             f" ({allowed[unit]})")
                return
            time.sleep(0.25)
        raise BootedError(f"systemd not up after the timeout (state {state!r}); jobs:\n"
                          + self.run("systemctl list-jobs --no-pager", check=False).stdout)

    def failed_units(self) -> list[str]:
        out = self.run("systemctl --failed --plain --no-legend --no-pager").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    # ------------------------------------------------------------------ inside
    def argv(self, cmd: str, user: str | None = None) -> list[str]:
        """The host argv that runs shell command CMD inside, as root or as USER."""
        inner = [*CMD_ENV, "HOME=/root", "sh", "-c", cmd]
        if user is not None:
            inner = ["runuser", "-u", user, "--", *CMD_ENV, f"HOME=/home/{user}",
                     f"USER={user}", f"LOGNAME={user}", "sh", "-c", f"cd && {cmd}"]
        return ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "--", *inner]

    def run(self, cmd: str, *, user: str | None = None, check: bool = True,
            timeout: float = 600, input: str | None = None  # noqa: A002
            ) -> subprocess.CompletedProcess[str]:
        """Run shell command CMD inside; stdout and stderr together in ``stdout``."""
        proc = subprocess.run(self.argv(cmd, user), input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              check=False, env={"PATH": PATH})
        if check and proc.returncode != 0:
            who = f" (as {user})" if user else ""
            raise BootedError(f"{cmd!r}{who} exited {proc.returncode}:\n{proc.stdout[-3000:]}")
        return proc

    def write(self, abspath: str, data: str | bytes, mode: int = 0o644) -> None:
        """Put a file into the running system (root-owned)."""
        target = self.root_view / abspath.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def preload(self, abspath: str, data: str | bytes, mode: int = 0o644) -> None:
        """Put a file into the overlay before a boot (the image never changes)."""
        if self.running:
            raise BootedError("preload() is for a system that is not running: use write()")
        target = self.scratch / "upper" / abspath.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)

    def copy_in(self, src: Path, abspath: str) -> None:
        self.write(abspath, Path(src).read_bytes())

    def journal(self, boot: int = 0, unit: str | None = None, args: str = "") -> str:
        """``journalctl -b BOOT`` (0 this boot, -1 the previous one), of UNIT if given."""
        sel = f" -u {shlex.quote(unit)}" if unit else ""
        return self.run(f"journalctl --no-pager -q -b {boot}{sel} {args}").stdout

    # ------------------------------------------------------------------ reboot, stop
    def reboot(self, timeout: float = BOOT_TIMEOUT,
               expect_failed: Mapping[str, str] | None = None) -> float:
        """The system's own ``systemctl reboot``; then the same overlay boots again."""
        proc = self._state.nspawn
        assert proc is not None
        self.run("systemctl reboot", check=False, timeout=60)
        try:
            status = proc.wait(timeout=REBOOT_WAIT)
        except subprocess.TimeoutExpired as exc:
            raise BootedError(f"still running {REBOOT_WAIT:.0f} s after systemctl reboot:\n"
                              f"{_tail(self.console_log)}") from exc
        if status != NSPAWN_REBOOT_STATUS:
            raise BootedError(f"systemd-nspawn exited {status}, not {NSPAWN_REBOOT_STATUS}"
                              f" (reboot):\n{_tail(self.console_log)}")
        _halt(self._state, wait=10)  # nothing may be left of the old boot
        return self.boot(timeout, expect_failed)

    def stop(self) -> None:
        """Power off (SIGKILL if it hangs), wait for every process, remove the scratch."""
        _halt(self._state)
        stuck = _remove_cgroups(self.name)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._finalizer.detach()
        if stuck:
            raise BootedError(f"cgroups that would not go: {stuck}")

    def __enter__(self) -> BootedSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def leftovers(self) -> list[str]:
        """What of this system is still on the host: processes, mounts, files."""
        left = []
        left += [f"process {pid} (nspawn or a container's init)"
                 for pid, start in self._state.inits if _alive(pid, start)]
        if self._state.nspawn is not None and self._state.nspawn.poll() is None:
            left.append(f"systemd-nspawn {self._state.nspawn.pid}")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if str(self.scratch) in (entry / "mountinfo").read_text():
                    left.append(f"a mount of {self.scratch} seen by process {entry.name}")
                    break
        left += [f"cgroup {d}" for d in cgroup_dirs(self.name) if d.exists()]
        left += [f"cgroup {h}/{n} (nspawn's, outside ours)" for h in CGROUP_HIERARCHIES
                 for n in ("payload", "supervisor") if Path(h, n).exists()]
        if self.scratch.exists():
            left.append(f"scratch directory {self.scratch}")
        return left
