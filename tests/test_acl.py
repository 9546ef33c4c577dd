"""``virtdeb acl``: the polkit rules file on fake roots, and its decisions by a REAL
polkitd (bookworm's 122) on a private dbus-daemon, asked with the real ``pkcheck``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.golden import snapshot
from virtdeb.acl import RULES_FILE, parse, render
from virtdeb.cli import main

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLKITD = "/usr/lib/polkit-1/polkitd"
HOSTILE = ['we"b', "a\\b", "</x>'); polkit.x=1; //", "ünï", "a\u2028b", "x" * 200]


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2("/etc/passwd", root / "etc/passwd")
    shutil.copy2(Path(__file__).parent / "cases/debug/libvirtd.conf",
                 root / "etc/libvirt/libvirtd.conf")
    return root


def test_render_parse_roundtrip_hostile_names() -> None:
    grants = [{"user": "daemon", "domains": HOSTILE}, {"user": "bin", "read_only": True}]
    data = render(grants)
    data.decode("ascii")  # every non-ASCII name escaped
    assert "\u2028".encode() not in data
    assert parse(data) == sorted(grants, key=lambda g: str(g["user"]))


def test_grant_without_consent_leaves_libvirtd_conf(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    conf = (root / "etc/libvirt/libvirtd.conf").read_bytes()
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert 'access_drivers = [ "polkit" ]' in out  # says what to do
    assert (root / "etc/libvirt/libvirtd.conf").read_bytes() == conf
    assert (root / RULES_FILE.lstrip("/")).is_file()
    assert (root / "var/lib/virtdeb/created" / RULES_FILE.lstrip("/")).is_file()


def test_grant_with_consent_revoke_revert(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    conf = root / "etc/libvirt/libvirtd.conf"
    consent = ["--set", "virtdeb.allow_edit=libvirtd.conf"]
    assert main(["acl", "grant", "daemon", "--domain", "web1", "we\"b2", "--root", str(root),
                 *consent]) == 0
    assert conf.read_text().splitlines()[-1] == 'access_drivers = [ "polkit"]'
    assert main(["acl", "grant", "daemon", "--domain", "web3", "--root", str(root)]) == 0
    assert main(["acl", "grant", "bin", "--read-only", "--root", str(root)]) == 0
    capsys.readouterr()
    assert main(["acl", "show", "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "bin: read-only", 'daemon: domains "web1", "we\\"b2", "web3"',
        "libvirtd access driver: polkit (grants apply)"]
    assert main(["acl", "revoke", "bin", "--root", str(root)]) == 0
    for _ in range(4):
        assert main(["revert", "--root", str(root)]) == 0
    assert snapshot(root) == before


@pytest.mark.parametrize("user", ["root;id", "a b", "../x", "ünï", "", "nosuchuser"])
def test_bad_user_refused_nothing_written(tmp_path: Path, user: str) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    assert main(["acl", "grant", "--read-only", "--root", str(root), "--", user]) == 2
    assert snapshot(root) == before


def test_bad_domain_refused(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    assert main(["acl", "grant", "daemon", "--domain", "a/b", "--root", str(root)]) == 2
    assert main(["acl", "grant", "daemon", "--domain", "", "--root", str(root)]) == 2
    assert snapshot(root) == before


def test_foreign_rules_file_is_not_overwritten(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    rules = root / RULES_FILE.lstrip("/")
    rules.parent.mkdir(parents=True)
    rules.write_text("polkit.addRule(function() {});\n")
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 2
    assert rules.read_text() == "polkit.addRule(function() {});\n"


# -- a real polkitd --------------------------------------------------------------
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


class Polkit:
    """dbus-daemon on a private socket; polkitd in a private mount namespace where
    /etc/polkit-1/rules.d is SCRATCH/rules and /etc/group is SCRATCH/group."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.env = {"PATH": PATH, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={scratch}/bus"}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, rules: bytes, libvirt_members: list[str]) -> None:
        s = self.scratch
        os.chmod(s, 0o755)  # polkitd drops to user polkitd and must reach the socket
        (s / "rules").mkdir()
        (s / "rules/60-virtdeb.rules").write_bytes(rules)
        lines = [line for line in Path("/etc/group").read_text().splitlines()
                 if not line.startswith("libvirt:")]
        (s / "group").write_text("\n".join(lines + [f"libvirt:x:4242:{','.join(libvirt_members)}"])
                                 + "\n")
        os.chmod(s / "group", 0o644)
        (s / "bus.conf").write_text(BUS_CONF.format(socket=s / "bus"))
        self._spawn(["dbus-daemon", f"--config-file={s}/bus.conf", "--nofork", "--nopidfile"])
        self._wait(lambda: (s / "bus").is_socket(), "dbus-daemon socket")
        script = (f"mount --bind {s}/rules /etc/polkit-1/rules.d && "
                  f"mount --bind {s}/group /etc/group && exec {POLKITD}")
        self._spawn(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                    log=s / "polkitd.log")
        self._wait(lambda: b"Acquired the name" in (s / "polkitd.log").read_bytes(), "polkitd")

    def _spawn(self, argv: list[str], log: Path | None = None) -> None:
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
        self.procs.append(subprocess.Popen(argv, env=self.env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if ready():  # type: ignore[operator]
                    return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not come up: {self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.scratch / "polkitd.log").read_text()
        return ""

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


@pytest.fixture
def polkit() -> Iterator[Polkit]:
    if os.geteuid() != 0:
        pytest.skip("polkitd in a private mount namespace needs root")
    for tool in ("dbus-daemon", "pkcheck", "setpriv", "unshare"):
        if shutil.which(tool, path=PATH) is None:
            pytest.skip(f"{tool} not installed")
    if not Path(POLKITD).exists():
        pytest.skip("polkitd not installed")
    for user in ("daemon", "bin", "sys"):
        subprocess.run(["id", user], check=True, capture_output=True, env={"PATH": PATH})
    # Not under tmp_path: pytest's base directory is 0700 and polkitd runs as polkitd.
    scratch = Path(tempfile.mkdtemp(prefix="vdtest-polkit-"))
    pk = Polkit(scratch)
    try:
        yield pk
    finally:
        pk.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.integration
def test_real_polkitd_decisions(polkit: Polkit) -> None:
    hostile = 'we"b2\u2028</x>'
    rules = render([{"user": "daemon", "domains": ["web1", hostile]},
                    {"user": "bin", "read_only": True}])
    polkit.start(rules, libvirt_members=["sys", "bin"])
    api = "org.libvirt.api."
    # --domain: those domains fully, nothing else but looking at the connection
    assert polkit.allowed("daemon", "org.libvirt.unix.manage")
    assert polkit.allowed("daemon", api + "domain.start", "web1")
    assert polkit.allowed("daemon", api + "domain.start", hostile)
    assert not polkit.allowed("daemon", api + "domain.start", "web2")
    assert not polkit.allowed("daemon", api + "domain.getattr", "web2")
    assert polkit.allowed("daemon", api + "connect.search-domains")
    assert not polkit.allowed("daemon", api + "network.start")
    assert not polkit.allowed("daemon", api + "connect.write")
    # --read-only: even though bin is in group libvirt, it may only look
    assert polkit.allowed("bin", api + "domain.getattr", "web1")
    assert polkit.allowed("bin", api + "domain.read", "web1")
    assert not polkit.allowed("bin", api + "domain.start", "web1")
    assert not polkit.allowed("bin", api + "domain.read-secure", "web1")
    # no grant, group libvirt: all of the API, as README.Debian says
    assert polkit.allowed("sys", api + "domain.start", "anything")
    assert polkit.allowed("sys", api + "network.write")
    # unrelated actions are not ours
    assert not polkit.allowed("sys", "org.freedesktop.packagekit.package-install")


@pytest.mark.integration
def test_real_polkitd_without_virtdeb_rules(polkit: Polkit) -> None:
    """The same questions without our grants: the defaults deny what the grants allow
    (so the decisions above come from virtdeb's file)."""
    polkit.start(render([]), libvirt_members=[])
    api = "org.libvirt.api."
    assert not polkit.allowed("daemon", api + "domain.start", "web1")
    assert not polkit.allowed("sys", api + "domain.start", "anything")
    assert polkit.allowed("bin", api + "domain.getattr", "web1")  # policy default: yes
