"""doctor's KVM host checks (rule qemu, virtdeb/system/kvm.py): what virt-host-validate qemu
checks, on fake roots with real device nodes, and for real: a child with the QEMU user's ids
opening a node, and the host's own devices compared with virt-host-validate's answers."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.golden import CASES
from virtdeb.host import Host
from virtdeb.rules import Status
from virtdeb.rules.qemu import Qemu
from virtdeb.system import kvm

REAL_QEMU_CONF = CASES / "qemu/real-9.0-consent/in/etc/libvirt/qemu.conf"
PASSWD = ("root:x:0:0:root:/root:/bin/bash\n"
          "libvirt-qemu:x:64055:993:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
          "alice:x:1000:1000::/home/alice:/bin/sh\n")
GROUP = "root:x:0:\nkvm:x:993:\nlibvirt-qemu:x:64055:libvirt-qemu\nalice:x:1000:\n"
FLAGS = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr {} sse sse2\n\n"
NODES = {kvm.KVM: (10, 232), kvm.TUN: (10, 200), kvm.VHOST_NET: (10, 238)}

# mknod and setuid need real root: integration (autopkgtest's unit run is in a user
# namespace, where root may not mknod); the suites' pytest runs them as root.
_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and setuid need root")


def needs_root(test: Any) -> Any:
    return pytest.mark.integration(_root_only(test))


def fake_root(tmp_path: Path, flag: str = "vmx", nodes: tuple[str, ...] = tuple(NODES),
              kvm_mode: int = 0o660, kvm_group: int = 993) -> Path:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(REAL_QEMU_CONF, root / "etc/libvirt/qemu.conf")
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "proc").mkdir()
    (root / "proc/cpuinfo").write_text(FLAGS.format(flag) * 2)
    (root / "dev/net").mkdir(parents=True)
    for path in nodes:
        node = root / path.lstrip("/")
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(*NODES[path]))
        os.chown(node, 0, kvm_group if path == kvm.KVM else 0)
        os.chmod(node, kvm_mode if path == kvm.KVM else 0o666)
    return root


def kvm_lines(root: Path) -> list[tuple[Status, str]]:
    findings = Qemu(Host(root=root, uri="test:///default")).check()
    return [(f.status, f.message) for f in findings[2:-1]]  # after user/group, before domains


@needs_root
def test_a_ready_kvm_host(tmp_path: Path) -> None:
    assert kvm_lines(fake_root(tmp_path)) == [
        (Status.PASS, "hardware virtualization (vmx)"),
        (Status.PASS, "/dev/kvm is usable by QEMU (libvirt-qemu)"),
        (Status.PASS, "/dev/vhost-net exists"),
        (Status.PASS, "/dev/net/tun exists"),
    ]


@needs_root
def test_kvm_not_usable_by_the_qemu_user(tmp_path: Path) -> None:
    # what this machine kind has without udev: 0600 root:root
    lines = kvm_lines(fake_root(tmp_path, "svm", kvm_mode=0o600, kvm_group=0))
    assert lines[0] == (Status.PASS, "hardware virtualization (svm)")
    assert lines[1] == (Status.FAIL, "/dev/kvm is not usable by QEMU (libvirt-qemu):"
                                     " mode 0600 root:root")


@needs_root
def test_group_access_counts_only_with_the_group(tmp_path: Path) -> None:
    root = fake_root(tmp_path, kvm_mode=0o660, kvm_group=1000)  # alice's group, not kvm
    assert kvm_lines(root)[1][0] is Status.FAIL
    (root / "etc/group").write_text(GROUP.replace("alice:x:1000:", "alice:x:1000:libvirt-qemu"))
    assert kvm_lines(root)[1] == (Status.PASS, "/dev/kvm is usable by QEMU (libvirt-qemu)")


@needs_root
def test_missing_devices(tmp_path: Path) -> None:
    lines = kvm_lines(fake_root(tmp_path, nodes=()))
    assert lines == [
        (Status.PASS, "hardware virtualization (vmx)"),
        (Status.FAIL, "/dev/kvm does not exist"),
        (Status.WARN, "/dev/vhost-net does not exist"),
        (Status.FAIL, "/dev/net/tun does not exist"),
    ]


@needs_root
def test_no_hardware_virtualization(tmp_path: Path) -> None:
    lines = kvm_lines(fake_root(tmp_path, flag="pni", nodes=(kvm.TUN,)))
    assert lines[0] == (Status.FAIL, "no hardware virtualization (vmx/svm) in /proc/cpuinfo"
                                     " and no /dev/kvm")
    assert [m for _, m in lines[1:]] == ["/dev/vhost-net does not exist", "/dev/net/tun exists"]
    # a nested KVM without the flag in the guest's cpuinfo still has a working /dev/kvm
    lines = kvm_lines(fake_root(tmp_path / "nested", flag="pni"))
    assert lines[0][0] is Status.NOTE
    assert lines[1] == (Status.PASS, "/dev/kvm is usable by QEMU (libvirt-qemu)")


def test_a_root_without_dev_is_not_checked(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(REAL_QEMU_CONF, root / "etc/libvirt/qemu.conf")
    findings = Qemu(Host(root=root, uri="test:///default")).check()
    na = [f for f in findings if "KVM devices not checked" in f.message]
    assert len(na) == 1 and na[0].status is Status.NA


@needs_root
def test_open_as_really_drops_to_the_users_ids() -> None:
    # not under tmp_path: pytest's directories are 0700, the user could not even look
    scratch = Path(tempfile.mkdtemp(prefix="vdtest-kvm-"))
    try:
        os.chmod(scratch, 0o755)
        _open_as_checks(scratch / "null")
    finally:
        shutil.rmtree(scratch)


def _open_as_checks(node: Path) -> None:
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    nobody = kvm.Identity("nobody", 65534, 65534, frozenset({65534}))
    assert kvm.open_as(node, nobody) == "Permission denied"
    os.chown(node, 0, 4242)
    os.chmod(node, 0o660)
    assert kvm.open_as(node, nobody) == "Permission denied"
    member = kvm.Identity("nobody", 65534, 65534, frozenset({65534, 4242}))
    assert kvm.open_as(node, member) is None
    assert os.getuid() == 0 and os.getgid() == 0  # the parent kept its ids


@pytest.mark.integration  # this machine's own devices, not a fixture
def test_the_hosts_devices_agree_with_virt_host_validate() -> None:
    tool = shutil.which("virt-host-validate", path="/usr/bin:/usr/sbin:/bin:/sbin")
    if tool is None:
        pytest.skip("virt-host-validate not installed (libvirt-clients)")
    out = subprocess.run([tool, "qemu"], capture_output=True, text=True, check=False,
                         env={"PATH": "/usr/bin:/usr/sbin:/bin:/sbin", "LC_ALL": "C"}).stdout
    theirs = {}
    for line in out.splitlines():
        for path in (kvm.TUN, kvm.VHOST_NET):
            # bookworm: "device /dev/net/tun exists"; trixie on: "device '/dev/net/tun' exists"
            if f"device {path} exists" in line or f"device '{path}' exists" in line:
                theirs[path] = line.rsplit(": ", 1)[1].split()[0]
    ours = {f.message.split()[0]: f.status.value for f in Qemu(Host()).check()
            if f.message.startswith(("/dev/net/tun ", "/dev/vhost-net "))}
    assert theirs and ours == theirs
