"""Tests of the private libvirtd harness (tests/harness/libvirtd.py) against a real daemon."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirtd import (
    PrivateLibvirtd,
    PrivateLibvirtdError,
    shutdown_begun,
    skip_reason,
    sweep_stale,
)
from tests.harness.procs import PATH, is_gone, netns_pids

pytestmark = pytest.mark.integration

DEFAULT_XML = Path("/usr/share/libvirt/networks/default.xml")
HOST_RUN_LIBVIRT_EXISTED = Path("/run/libvirt").exists()
KVM_DOMAIN = """<domain type='kvm'>
  <name>vdtest-kvm</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>"""


def sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False,
                          env={"PATH": PATH, "LC_ALL": "C.UTF-8"})


@pytest.fixture
def needs_daemon() -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


def _assert_gone(netns: str, scratch: Path, pids: list[int]) -> None:
    assert pids, "expected some processes to check"
    assert [p for p in pids if not is_gone(p)] == []
    assert netns not in sh("ip", "netns", "list").stdout
    assert not Path("/run/netns", netns).exists()
    assert not scratch.exists()


def test_daemon_reachable_via_uri(libvirtd: PrivateLibvirtd, libvirt_conn: Any) -> None:
    assert libvirtd.uri == f"qemu+unix:///system?socket={libvirtd.scratch}/run/libvirt/libvirt-sock"
    assert libvirtd.socket.is_socket()
    assert libvirt_conn.getLibVersion() >= 9_000_000
    assert libvirt_conn.getType() == "QEMU"
    assert libvirt_conn.listAllDomains() == []
    assert libvirt_conn.listAllNetworks() == []  # host definitions are not copied
    # the libvirtd process lives in our namespace
    assert libvirtd.pid in libvirtd.pids()
    # the host's /run is untouched
    assert Path("/run/libvirt").exists() == HOST_RUN_LIBVIRT_EXISTED


def test_lo_up_and_private_mounts(libvirtd: PrivateLibvirtd) -> None:
    assert "UP" in libvirtd.ip("link", "show", "lo").stdout.split(">")[0]
    marker = libvirtd.scratch / "etc/libvirt/vdtest-marker"
    marker.write_text("private\n")
    try:
        seen = libvirtd.run_in_ns(["cat", "/etc/libvirt/vdtest-marker"], mounts=True)
        assert seen.stdout == "private\n"
        assert libvirtd.run_in_ns(["test", "-S", "/run/libvirt/libvirt-sock"], mounts=True)
        # without mounts=True the command sees the host's files
        assert libvirtd.run_in_ns(["test", "-e", "/etc/libvirt/vdtest-marker"],
                                  check=False).returncode != 0
    finally:
        marker.unlink()
    assert not Path("/etc/libvirt/vdtest-marker").exists()
    # the qemu user (group kvm) may open the private /dev/kvm; the host's node is unchanged
    host_kvm = os.stat("/dev/kvm")
    ns_kvm = libvirtd.run_in_ns(["stat", "-c", "%a %G %t:%T", "/dev/kvm"], mounts=True).stdout
    assert ns_kvm.split()[:2] == ["660", "kvm"]
    assert os.stat("/dev/kvm").st_mode == host_kvm.st_mode


def test_default_network_starts_in_namespace_only(
    libvirtd: PrivateLibvirtd, libvirt_conn: Any
) -> None:
    net = libvirt_conn.networkDefineXML(DEFAULT_XML.read_text())
    net.create()
    net.setAutostart(1)
    assert net.isActive() == 1
    assert net.autostart() == 1
    assert (libvirtd.scratch / "etc/libvirt/qemu/networks/autostart/default.xml").is_symlink()
    addr = libvirtd.ip("addr", "show", "virbr0").stdout
    assert "inet 192.168.122.1/24" in addr
    ours = libvirtd.ip("link", "show", "virbr0").stdout
    host = sh("ip", "link", "show", "virbr0")
    if host.returncode == 0:  # the host has a virbr0 of its own: it must not be ours
        mac = ours.split("link/ether ")[1].split()[0]
        assert mac not in host.stdout
    # dnsmasq runs in the namespace, the NAT rules are in the namespace's iptables
    comms = [Path(f"/proc/{p}/comm").read_text().strip() for p in libvirtd.pids()]
    assert "dnsmasq" in comms
    assert "LIBVIRT_PRT" in libvirtd.run_in_ns(["iptables", "-t", "nat", "-S"]).stdout


def test_kvm_domain_can_be_defined(libvirt_conn: Any) -> None:
    dom = libvirt_conn.defineXML(KVM_DOMAIN)
    assert dom.name() == "vdtest-kvm"
    assert dom.isActive() == 0
    assert "type='kvm'" in dom.XMLDesc() or 'type="kvm"' in dom.XMLDesc()
    caps = libvirt_conn.getDomainCapabilities(None, "x86_64", None, "kvm")
    assert "<domain>kvm</domain>" in caps


def test_cleanup_between_tests(libvirt_conn: Any) -> None:
    # runs after the tests above: their network and domain were removed
    assert libvirt_conn.listAllDomains() == []
    assert libvirt_conn.listAllNetworks() == []


def test_add_address_and_route(libvirtd: PrivateLibvirtd, libvirt_conn: Any) -> None:
    import libvirt

    assert libvirtd.add_address("192.168.122.5/24") == "vdA"
    assert libvirtd.add_route("10.99.0.0/16") == "vdA"
    assert libvirtd.add_route("172.31.0.0/16", via="192.168.122.254") == "vdA"
    routes = libvirtd.ip("route").stdout
    assert "192.168.122.0/24 dev vdA" in routes
    assert "10.99.0.0/16 dev vdA" in routes
    assert "172.31.0.0/16 via 192.168.122.254 dev vdA" in routes
    assert "10.99.0.0/16" not in sh("ip", "route").stdout  # not on the host
    # libvirt itself sees the collision: the default network refuses to start
    net = libvirt_conn.networkDefineXML(DEFAULT_XML.read_text())
    with pytest.raises(libvirt.libvirtError) as err:
        net.create()
    assert "already in use" in str(err.value)
    libvirtd.reset(libvirt_conn)
    assert libvirtd.ip("link", "show", "vdA", check=False).returncode != 0
    net = libvirt_conn.networkDefineXML(DEFAULT_XML.read_text())
    net.create()  # starts once the address is gone


def test_teardown_leaves_nothing(needs_daemon: None) -> None:
    with PrivateLibvirtd() as d:
        conn = d.connect()
        net = conn.networkDefineXML(DEFAULT_XML.read_text())
        net.create()
        conn.close()
        pids = d.pids()
        netns, scratch = d.netns, d.scratch
        assert len(pids) >= 4  # libvirtd, virtlogd, 2 dnsmasq
        assert netns in sh("ip", "netns", "list").stdout
    _assert_gone(netns, scratch, pids)
    assert d.stop_seconds is not None and d.start_seconds is not None
    d.stop()  # idempotent


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_teardown_on_exception(needs_daemon: None, exc: type[BaseException]) -> None:
    d = PrivateLibvirtd()
    pids: list[int] = []
    with pytest.raises(exc):
        with d:
            pids = netns_pids(d.netns)
            raise exc("boom")
    _assert_gone(d.netns, d.scratch, pids)


def test_a_daemon_that_never_acts_on_sigterm_is_a_problem(needs_daemon: None) -> None:
    """A SIGKILL is a note only after a shutdown that began; a stopped libvirtd (SIGSTOP:
    it never takes the SIGTERM) makes stop() raise, and still nothing is left behind."""
    d = PrivateLibvirtd()
    d.start()
    pids, pid = d.pids(), d.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(PrivateLibvirtdError, match=r"did not act on SIGTERM in 10 s \(libvirtd:"):
        d.stop()
    _assert_gone(d.netns, d.scratch, pids)
    assert d.teardown_notes == []


def test_shutdown_begun_is_the_daemon_shutdown_thread() -> None:
    # the threads of a libvirtd hung in its shutdown (trixie and bookworm alike, seen in CI)
    hung = [("libvirtd", "poll_schedule_timeout.constprop.0"), ("pool-spawner", "futex_do_wait"),
            ("gmain", "poll_schedule_timeout.constprop.0"), ("udev-event", "futex_do_wait"),
            ("daemon-shutdown", "futex_do_wait")]
    assert shutdown_begun(hung)
    assert not shutdown_begun(hung[:-1])
    assert not shutdown_begun([])


def test_start_failure_reports_log_and_cleans_up(needs_daemon: None) -> None:
    class Broken(PrivateLibvirtd):
        def _prepare_scratch(self) -> None:
            super()._prepare_scratch()
            (self.scratch / "etc/libvirt/libvirtd.conf").write_text("this is = not valid [\n")

    d = Broken(start_timeout=10)
    with pytest.raises(PrivateLibvirtdError) as err:
        d.start()
    assert "exited" in str(err.value)
    assert "libvirtd.conf" in str(err.value)  # the daemon's own complaint is included
    assert not Path("/run/netns", d.netns).exists()
    assert not d.scratch.exists()


def test_sweep_stale_removes_dead_owner(needs_daemon: None, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"vdtest-{dead.pid}-deadbeef"
    assert sh("ip", "netns", "add", name).returncode == 0
    try:
        (tmp_path / name).mkdir()
        alive = f"vdtest-{os.getpid()}-cafe"
        (tmp_path / alive).mkdir()
        removed = sweep_stale(str(tmp_path))
        assert name in removed
        assert alive not in removed
        assert not Path("/run/netns", name).exists()
        assert not (tmp_path / name).exists()
        assert (tmp_path / alive).exists()
    finally:
        sh("ip", "netns", "del", name)


# ------------------------------------------------------------------ chroot mode
# A root with libvirt-daemon-system installed: `make demo-image` (also part of make check).
CHROOT = Path(os.environ.get("VIRTDEB_TEST_CHROOT")
              or Path(__file__).resolve().parents[1] / ".cache/demo-trixie")
NET_XML = """<network><name>vdtest-chroot</name><bridge name='vdbr7'/>
  <ip address='10.77.0.1' prefix='24'/></network>"""


def _mounts_mentioning(*paths: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if any(str(p) in line for p in paths)]


@pytest.fixture
def needs_chroot(needs_daemon: None) -> Path:
    if not (CHROOT / "usr/sbin/libvirtd").is_file():
        pytest.skip(f"no chroot with libvirt-daemon-system at {CHROOT}: run `make demo-image`")
    return CHROOT


def test_chroot_mode_runs_the_chroots_daemons(needs_chroot: Path) -> None:
    root = needs_chroot
    etc_before = sorted(str(p.relative_to(root)) for p in (root / "etc/libvirt").rglob("*"))
    with PrivateLibvirtd(root=root, overlay=True, start_timeout=60) as d:
        assert d.uri == f"qemu+unix:///system?socket=/proc/{d.pid}/root/run/libvirt/libvirt-sock"
        conn = d.connect()
        try:
            # the chroot's libvirt answers, not the host's
            status = (root / "var/lib/dpkg/status").read_text()
            para = status.split("Package: libvirt-daemon\n", 1)[1].split("\n\n", 1)[0]
            version = para.split("Version: ", 1)[1].split("\n", 1)[0]
            major, minor = (int(x) for x in version.split(".")[:2])
            assert conn.getLibVersion() // 1000 == major * 1000 + minor
            net = conn.networkDefineXML(NET_XML)
            net.create()
            net.setAutostart(1)
        finally:
            conn.close()
        # inside: the chroot's files, qemu:///system as on a real host, the private /run
        inside = d.run_in_ns(
            "head -n1 /etc/os-release; virsh -c qemu:///system net-list --name; ls /run/libvirt;"
            " stat -c '%a %G' /dev/kvm; ip -brief addr show vdbr7", mounts=True).stdout
        assert (root / "etc/os-release").read_text().splitlines()[0] in inside
        assert "vdtest-chroot" in inside
        assert "libvirt-sock" in inside
        if Path("/dev/kvm").exists():
            assert "660 kvm" in inside
        assert "10.77.0.1/24" in inside
        assert sh("ip", "link", "show", "vdbr7").returncode != 0  # not on the host
        # the definition is in the overlay (seen through root_view), not in the root itself
        xml = "etc/libvirt/qemu/networks/vdtest-chroot.xml"
        assert (d.root_view / xml).is_file()
        assert not (root / xml).exists()
        assert (d.scratch / "upper" / xml).is_file()
        # an extra daemon in the same namespaces and chroot (what sshd would be)
        extra = d.popen_in_ns(["sleep", "600"])
        for _ in range(100):
            if extra.pid in d.pids():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        pids = d.pids()
        assert extra.pid in pids  # nsenter execs: the Popen child is sleep itself
        comms = {Path(f"/proc/{p}/comm").read_text().strip() for p in pids}
        assert {"libvirtd", "virtlogd", "dnsmasq", "sleep"} <= comms
        netns, scratch = d.netns, d.scratch
        assert _mounts_mentioning(root, scratch) == []  # nothing mounted in the host's view
    assert extra.wait(timeout=10) != 0  # killed by the teardown
    _assert_gone(netns, scratch, pids)
    assert _mounts_mentioning(root, scratch) == []
    assert sorted(str(p.relative_to(root)) for p in (root / "etc/libvirt").rglob("*")) \
        == etc_before
    assert not (root / "run/libvirt").exists() or not any((root / "run/libvirt").iterdir())


def test_chroot_mode_refuses_a_root_without_libvirtd(needs_daemon: None, tmp_path: Path) -> None:
    for d in ("proc", "dev", "sys", "run"):
        (tmp_path / d).mkdir()
    daemon = PrivateLibvirtd(root=tmp_path)
    with pytest.raises(PrivateLibvirtdError, match="libvirt-daemon-system"):
        daemon.start()
    assert not daemon.scratch.exists()
    assert not Path("/run/netns", daemon.netns).exists()
    with pytest.raises(PrivateLibvirtdError, match="overlay=True needs root"):
        PrivateLibvirtd(overlay=True)


def test_chroot_mode_stops_right_after_start(needs_chroot: Path) -> None:
    """A stop at once after the start leaves nothing behind (libvirt 11 may need the
    SIGKILL then: a note, not a problem), and the chroot's qemu capabilities are kept."""
    for _ in range(2):
        d = PrivateLibvirtd(root=needs_chroot, overlay=True, start_timeout=60)
        d.start()
        pids = d.pids()
        d.stop()
        _assert_gone(d.netns, d.scratch, pids)
        assert d.stop_seconds is not None and d.stop_seconds < 20
        assert all("SIGKILL" in n for n in d.teardown_notes)
    cache = Path(str(d.caps_cache))
    assert cache.name == f"qemu-capabilities-{needs_chroot.name}"
    assert list(cache.glob("*.xml")), "the chroot's qemu capabilities were not kept"
