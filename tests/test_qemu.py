"""Rule ``qemu``: qemu.conf user/group, ethernet interfaces against a real private
libvirtd, and the consented clear_emulator_capabilities edit of Debian's real qemu.conf."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.golden import CASES
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import Status
from virtdeb.rules.qemu import KEY, Qemu, driver_knows_key, ethernet_domains

REAL_QEMU_CONF = CASES / "qemu/real-9.0-consent/in/etc/libvirt/qemu.conf"
# /etc/libvirt/qemu.conf of libvirt-daemon-system 9.0.0-4+deb12u2 (dpkg status Conffiles).
DEBIAN_MD5 = "8da3a97d2d4fe0870a810c7433efef31"


def domain_xml(name: str, ethernet: bool) -> str:
    nic = ("<interface type='ethernet'><mac address='52:54:00:00:00:01'/>"
           "<model type='virtio'/></interface>") if ethernet else \
        "<interface type='user'><model type='virtio'/></interface>"
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{nic}</devices></domain>")


def fake_root(tmp_path: Path, conf: str | None = None) -> Path:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    for name in ("passwd", "group"):
        shutil.copy2(f"/etc/{name}", root / "etc" / name)
    if conf is None:
        shutil.copy2(REAL_QEMU_CONF, root / "etc/libvirt/qemu.conf")
    else:
        (root / "etc/libvirt/qemu.conf").write_text(conf)
    return root


def test_golden_input_is_debians_pristine_conffile() -> None:
    assert hashlib.md5(REAL_QEMU_CONF.read_bytes()).hexdigest() == DEBIAN_MD5  # noqa: S324


def test_consented_edit_is_minimal(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    h = Host(root=root, uri="test:///default",
             overrides={"qemu.clear_emulator_capabilities": "0"})
    changes = Qemu(h).plan()
    assert len(changes) == 1 and changes[0].foreign
    assert "CAP_NET_ADMIN" in changes[0].note  # type: ignore[attr-defined]
    added = [line for line in changes[0].diff().splitlines()
             if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert added[-1] == f"+{KEY} = 0"
    assert len(added) == 3 and all(line.startswith("+") for line in added)
    assert "CAP_NET_ADMIN" in added[0]


def test_no_consent_no_change(tmp_path: Path) -> None:
    h = Host(root=fake_root(tmp_path), uri="test:///default")
    assert Qemu(h).plan() == []


def test_existing_setting_changed_in_place(tmp_path: Path) -> None:
    root = fake_root(tmp_path, f'user = "libvirt-qemu"\n{KEY} = 1\n')
    h = Host(root=root, uri="test:///default",
             overrides={"qemu.clear_emulator_capabilities": "0"})
    Journal(h).apply(Qemu(h).plan(), "test")
    assert (root / "etc/libvirt/qemu.conf").read_text() == f'user = "libvirt-qemu"\n{KEY} = 0\n'


def test_user_and_group_must_exist(tmp_path: Path) -> None:
    root = fake_root(tmp_path, 'user = "nosuchuser"\ngroup = "+0"\n')
    h = Host(root=root, uri="test:///default")
    findings = Qemu(h).check()
    assert [(f.status, f.message) for f in findings[:2]] == [
        (Status.FAIL, "qemu.conf user 'nosuchuser' does not exist"),
        (Status.PASS, "QEMU runs as group +0")]


def test_libvirt_unreachable_is_a_warning(tmp_path: Path) -> None:
    h = Host(root=fake_root(tmp_path), uri=f"qemu+unix:///system?socket={tmp_path}/none")
    findings = Qemu(h).check()
    assert findings[-1].status is Status.WARN
    assert "cannot list domains" in findings[-1].message


def test_driver_probe_on_this_host() -> None:
    """libvirt 9.0's QEMU driver no longer contains the key (measured on bookworm)."""
    h = Host()
    known = driver_knows_key(h)
    version = h.version("libvirt-daemon-driver-qemu")
    if known is None or version is None:
        pytest.skip("no QEMU driver installed")
    if version.startswith("9.0."):
        assert known is False


def test_obsolete_key_plans_nothing(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    driver = root / "usr/lib/x86_64-linux-gnu/libvirt/connection-driver"
    driver.mkdir(parents=True)
    (driver / "libvirt_driver_qemu.so").write_bytes(b"\x7fELF no such option here")
    h = Host(root=root, uri="test:///default",
             overrides={"qemu.clear_emulator_capabilities": "0"})
    assert driver_knows_key(h) is False
    assert Qemu(h).plan() == []
    (driver / "libvirt_driver_qemu.so").write_bytes(b"\x7fELF " + KEY.encode())
    assert driver_knows_key(h) is True
    assert len(Qemu(h).plan()) == 1


def test_ethernet_domains_on_real_libvirtd(libvirtd: Any, libvirt_conn: Any,
                                           tmp_path: Path) -> None:
    libvirt_conn.defineXML(domain_xml("vdtest-eth", ethernet=True))
    libvirt_conn.defineXML(domain_xml("vdtest-user", ethernet=False))
    assert ethernet_domains(libvirt_conn) == ["vdtest-eth"]
    root = fake_root(tmp_path)
    h = Host(root=root, uri=libvirtd.uri)
    try:
        findings = Qemu(h).check()
    finally:
        h.close()
    last = findings[-1]
    assert last.status is Status.WARN  # no driver module in the fake root: README applies
    assert "vdtest-eth" in last.message and "vdtest-user" not in last.message
    assert "CAP_NET_ADMIN" in last.hint
    (root / "etc/libvirt/qemu.conf").write_text(f"{KEY} = 0\n")
    h = Host(root=root, uri=libvirtd.uri)
    try:
        assert Qemu(h).check()[-1].status is Status.NOTE
    finally:
        h.close()
    for dom in libvirt_conn.listAllDomains():
        assert not dom.isActive()  # defined, never started
