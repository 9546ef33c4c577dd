"""Rule ``ssh``: the nc alternative, with dpkg's real update-alternatives on a fake root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.procs import PATH
from virtdeb.effects import ConflictError
from virtdeb.effects.alternative import AlternativeChange
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import Status
from virtdeb.rules.ssh import Ssh, has_ssh_helper
from virtdeb.system import alternatives

STATUS = """Package: netcat-openbsd
Status: install ok installed
Version: 1.219-1

Package: libvirt-daemon
Status: install ok installed
Version: {libvirt}
"""


def ua(root: Path, *args: str) -> str:
    proc = subprocess.run(["update-alternatives", "--root", str(root), "--log",
                           str(root / "var/log/dpkg.log"), *args], capture_output=True,
                          text=True, env={"PATH": PATH}, check=True)
    return proc.stdout


def make_root(tmp_path: Path, libvirt: str = "9.0.0-4") -> Path:
    """nc.openbsd (priority 50) and nc.traditional (priority 60, wins in auto mode)."""
    root = tmp_path / "root"
    for d in ("bin", "etc/alternatives", "var/lib/dpkg/alternatives", "var/log",
              "usr/share/man/man1"):
        (root / d).mkdir(parents=True)
    for nc in ("nc.openbsd", "nc.traditional"):
        (root / "bin" / nc).write_text("#!/bin/sh\n")
        os.chmod(root / "bin" / nc, 0o755)
    (root / "var/lib/dpkg/status").write_text(STATUS.format(libvirt=libvirt))
    (root / "var/lib/dpkg/info").mkdir()
    (root / "var/lib/dpkg/info/libvirt-daemon.list").write_text("/usr/sbin\n/usr/sbin/libvirtd\n")
    ua(root, "--install", "/bin/nc", "nc", "/bin/nc.openbsd", "50")
    ua(root, "--install", "/bin/nc", "nc", "/bin/nc.traditional", "60")
    return root


def link(root: Path) -> str:
    return os.readlink(root / "etc/alternatives/nc")


def test_auto_mode_elsewhere_is_fixed_and_reverted(tmp_path: Path) -> None:
    root = make_root(tmp_path, libvirt="6.0.0-8")
    h = Host(root=root)
    assert link(root) == "/bin/nc.traditional"
    admin_before = (root / "var/lib/dpkg/alternatives/nc").read_bytes()
    findings = Ssh(h).check()
    assert [f.status for f in findings] == [Status.WARN]  # libvirt 6.0: no helper
    changes = Ssh(h).plan()
    assert len(changes) == 1 and "update-alternatives --set nc /bin/nc.openbsd" in \
        changes[0].diff()
    Journal(h).apply(changes, "test")
    assert link(root) == "/bin/nc.openbsd"
    assert os.readlink(root / "bin/nc") == "/etc/alternatives/nc"  # inside the root
    assert alternatives.query(h, "nc").status == "manual"  # type: ignore[union-attr]
    assert Ssh(h).plan() == []
    assert [f.status for f in Ssh(h).check()] == [Status.PASS]
    Journal(h).revert()
    state = alternatives.query(h, "nc")
    assert state is not None and (state.status, state.value) == ("auto", "/bin/nc.traditional")
    assert (root / "var/lib/dpkg/alternatives/nc").read_bytes() == admin_before


def test_set_by_hand_is_left_alone(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ua(root, "--set", "nc", "/bin/nc.traditional")
    h = Host(root=root)
    assert Ssh(h).plan() == []
    findings = Ssh(h).check()
    assert [f.status for f in findings] == [Status.NOTE, Status.NOTE]
    assert "virt-ssh-helper" in findings[0].message
    assert "set by hand to /bin/nc.traditional" in findings[1].message


def test_revert_restores_manual_value(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    h = Host(root=root)
    before = alternatives.query(h, "nc")
    assert before is not None
    # A manual setting to traditional: virtdeb would not plan; make the change by hand.
    ua(root, "--set", "nc", "/bin/nc.traditional")
    manual = alternatives.query(h, "nc")
    assert manual is not None
    change = AlternativeChange("ssh", "nc", manual, "/bin/nc.openbsd")
    Journal(h).apply([change], "test")
    assert link(root) == "/bin/nc.openbsd"
    Journal(h).revert()
    assert alternatives.query(h, "nc") == manual


def test_revert_refuses_when_changed_meanwhile(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    h = Host(root=root)
    Journal(h).apply(Ssh(h).plan(), "test")
    ua(root, "--set", "nc", "/bin/nc.traditional")  # the admin changed it since
    with pytest.raises(ConflictError, match="changed since virtdeb set it"):
        Journal(h).revert()
    assert link(root) == "/bin/nc.traditional"


def test_not_installed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    h = Host(root=root)
    assert [f.status for f in Ssh(h).check()] == [Status.WARN]
    assert Ssh(h).plan() == []


@pytest.mark.parametrize(("version", "helper"), [("6.8.0-1", True), ("9.0.0-4+deb12u2", True),
                                                 ("6.7.99-1", False), ("5.0.0-4", False),
                                                 (None, False)])
def test_ssh_helper_version(version: str | None, helper: bool) -> None:
    assert has_ssh_helper(version) is helper


def test_real_host_read_only() -> None:
    """On this machine (netcat-openbsd installed): doctor runs and changes nothing."""
    h = Host()
    if not h.installed("netcat-openbsd"):
        pytest.skip("netcat-openbsd not installed")
    before = subprocess.run(["update-alternatives", "--query", "nc"], capture_output=True,
                            text=True, env={"PATH": PATH}, check=False).stdout
    findings = Ssh(h).check()
    assert findings and all(f.status is not Status.FAIL for f in findings)
    after = subprocess.run(["update-alternatives", "--query", "nc"], capture_output=True,
                           text=True, env={"PATH": PATH}, check=False).stdout
    assert before == after
