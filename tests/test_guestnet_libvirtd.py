"""Rule ``guestnet`` on the real datapath, in private namespaces only.

A private libvirtd (tests/harness/libvirtd.py) starts the default NAT network
from libvirt's template.  Two more network namespaces of this test's own:

    guest  --veth-->  virbr0 [libvirtd's netns, libvirt's NAT]  --veth-->  upstream

The "guest" has an address of the network's DHCP range and its gateway as
default route; "upstream" listens on a TCP port on a TEST-NET-2 address that
only the libvirtd's namespace has a route to, so the guest gets through only
by libvirt's forwarding and masquerading.  The firewall changes (a foreign
FORWARD policy DROP, as Docker and ufw set) are made inside the libvirtd's
netns only; everything goes with the namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirtd import NETNS_PREFIX, PrivateLibvirtd
from tests.harness.procs import netns_pids
from virtdeb.host import Host
from virtdeb.rules import Finding, Status
from virtdeb.rules.guestnet import GuestNet
from virtdeb.rules.network import BUILTIN_TEMPLATE, TEMPLATE, xml_subnet
from virtdeb.system import firewall as fw

pytestmark = pytest.mark.integration
UPLINK = ipaddress.IPv4Network("198.51.100.0/24")  # TEST-NET-2, inside namespaces only
PORT = 8053
SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"upstream\\n")
    c.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        sys.stdout.write(c.recv(64).decode())
except OSError as exc:
    sys.stdout.write(f"{type(exc).__name__}: {exc}\\n")
    sys.exit(1)
"""
DNS = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.bind(("0.0.0.0", 53))
t.listen(1)
print("ready", flush=True)
sys.stdin.read()
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check,
                          stdin=subprocess.DEVNULL)


class Wiring:
    """The guest, upstream namespaces and the wiring around libvirtd's network."""

    def __init__(self, libvirtd: PrivateLibvirtd, tmp: Path) -> None:
        tag = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.libvirtd = libvirtd
        self.guest, self.up = f"{tag}-g", f"{tag}-u"
        self.tmp = tmp
        (tmp / "server.py").write_text(SERVER)
        (tmp / "client.py").write_text(CLIENT)
        self.server: subprocess.Popen[str] | None = None

    def wire(self, subnet: ipaddress.IPv4Network, bridge: str) -> None:
        ns = self.libvirtd.netns
        hosts = list(subnet.hosts())
        up = list(UPLINK.hosts())
        self.upstream_addr = str(up[1])
        for name in (self.guest, self.up):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        # guest <-> virbr0
        sh("ip", "-n", ns, "link", "add", "vdg0", "type", "veth", "peer", "name", "eth0",
           "netns", self.guest)
        sh("ip", "-n", ns, "link", "set", "vdg0", "master", bridge, "up")
        self.subnet, self.guest_addr = subnet, hosts[-2]
        sh("ip", "-n", self.guest, "addr", "add", f"{hosts[-2]}/{subnet.prefixlen}",
           "dev", "eth0")
        sh("ip", "-n", self.guest, "link", "set", "eth0", "up")
        sh("ip", "-n", self.guest, "route", "add", "default", "via", str(hosts[0]))
        # libvirt's bridge runs STP: the port forwards after listening and learning
        deadline = time.monotonic() + 30
        while "state forwarding" not in sh("bridge", "-n", ns, "link", "show", "dev",
                                           "vdg0").stdout:
            assert time.monotonic() < deadline, "the guest's bridge port never forwarded"
            time.sleep(0.2)
        # libvirtd's netns <-> upstream
        sh("ip", "-n", ns, "link", "add", "vdu0", "type", "veth", "peer", "name", "eth0",
           "netns", self.up)
        sh("ip", "-n", ns, "addr", "add", f"{up[0]}/{UPLINK.prefixlen}", "dev", "vdu0")
        sh("ip", "-n", ns, "link", "set", "vdu0", "up")
        sh("ip", "-n", self.up, "addr", "add", f"{up[1]}/{UPLINK.prefixlen}", "dev", "eth0")
        sh("ip", "-n", self.up, "link", "set", "eth0", "up")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.up, sys.executable, str(self.tmp / "server.py"),
             self.upstream_addr, str(PORT)], stdout=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
        assert self.server.stdout is not None and self.server.stdout.readline() == "ready\n"

    def connect(self, timeout: float = 3.0) -> str:
        """What the guest gets from upstream, or the error it meets."""
        proc = sh("ip", "netns", "exec", self.guest, sys.executable,
                  str(self.tmp / "client.py"), self.upstream_addr, str(PORT), str(timeout),
                  check=False)
        return proc.stdout.strip()

    def close(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        for name in (self.guest, self.up):
            if Path("/run/netns", name).exists():
                for pid in netns_pids(name):
                    sh("kill", "-9", str(pid), check=False)
                sh("ip", "netns", "del", name)
        self.libvirtd.ip("link", "del", "vdu0", check=False)
        self.libvirtd.ip("link", "del", "vdg0", check=False)


def start_default(libvirtd: PrivateLibvirtd, conn: Any) -> Any:
    real = Path(TEMPLATE)
    xml = real.read_text() if real.exists() else BUILTIN_TEMPLATE
    net = conn.networkDefineXML(xml)
    net.create()
    return net


def host_of(libvirtd: PrivateLibvirtd) -> Host:
    # the real root (dpkg status, network.conf of this system): the firewall and /proc/net
    # are the libvirtd's netns through host.netns
    return Host(root=Path("/"), uri=libvirtd.uri, netns=libvirtd.netns)


def fails(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.status is Status.FAIL]


@pytest.fixture
def datapath(libvirtd: PrivateLibvirtd, libvirt_conn: Any, tmp_path: Path) -> Iterator[Wiring]:
    net = start_default(libvirtd, libvirt_conn)
    subnet = xml_subnet(net.XMLDesc(0))
    assert subnet is not None
    path = Wiring(libvirtd, tmp_path)
    try:
        path.wire(subnet, net.bridgeName())
        yield path
    finally:
        path.close()
        for flavor in ("iptables-legacy", "iptables-nft"):
            if shutil.which(flavor):
                libvirtd.run_in_ns([flavor, "-P", "FORWARD", "ACCEPT"], check=False)


def test_guest_through_nat_and_a_foreign_drop_policy(libvirtd: PrivateLibvirtd,
                                                    datapath: Wiring) -> None:
    """The guest reaches upstream; a DROP policy in the iptables flavor libvirt does not
    write to cuts it; doctor names that chain; the hint's accept rules bring it back."""
    host = host_of(libvirtd)
    assert datapath.connect() == "upstream"
    found = GuestNet(host).check()
    assert fails(found) == []
    [backend] = [f.message for f in found if "firewall backend" in f.message]
    print(f"\n{backend}")
    if not LENS.exists():  # bookworm: libvirt 9.0
        assert backend.endswith("has no /etc/libvirt/network.conf: it writes its rules with"
                                " iptables only)")
    writes_to = fw.iptables_flavor(host)
    # libvirt's own flavor with a DROP policy (Docker's, where Docker and libvirt share it):
    # libvirt's rules in the same chain still accept the guest
    libvirtd.run_in_ns([writes_to, "-P", "FORWARD", "DROP"])
    assert datapath.connect() == "upstream"
    assert fails(GuestNet(host).check()) == []
    libvirtd.run_in_ns([writes_to, "-P", "FORWARD", "ACCEPT"])

    other = "iptables-legacy" if writes_to == "iptables-nft" else "iptables-nft"
    libvirtd.run_in_ns([other, "-P", "FORWARD", "DROP"])
    assert datapath.connect(timeout=2).startswith("TimeoutError"), \
        "a DROP policy in the other iptables flavor drops forwarded packets"
    [fail] = fails(GuestNet(host).check())
    assert fail.message.startswith(f"guests' forwarded traffic is dropped by the {other}"
                                   " FORWARD chain (policy DROP), which libvirt's")
    print(f"\n{fail.message}\n  hint: {fail.hint}")
    accept = fail.hint.split("there: ", 1)[1].split(" (Docker", 1)[0]
    for command in accept.split("; "):
        libvirtd.run_in_ns(command.split())
    assert datapath.connect() == "upstream"
    assert fails(GuestNet(host).check()) == []


def test_native_nftables_drop(libvirtd: PrivateLibvirtd, datapath: Wiring) -> None:
    """A native nftables firewall whose forward chain drops (an admin's /etc/nftables.conf)
    beside libvirt's iptables rules: the guest is cut, doctor names the chain, its hint's
    nft rules let the guest through."""
    if shutil.which("nft") is None:
        pytest.skip("nft not installed (nftables is in DEPS and SUITE_TEST_DEPS: a chroot"
                    " built before it was added lacks it)")
    host = host_of(libvirtd)
    libvirtd.run_in_ns(["nft", "add", "table", "inet", "vdfw"])
    try:
        libvirtd.run_in_ns(["nft", "add", "chain", "inet", "vdfw", "forward", "{ type filter"
                            " hook forward priority 0 ; policy drop ; }"])
        assert datapath.connect(timeout=2).startswith("TimeoutError")
        [fail] = fails(GuestNet(host).check())
        assert fail.message.startswith("guests' forwarded traffic is dropped by the nft table"
                                       " inet vdfw forward chain (policy DROP)")
        print(f"\n{fail.message}\n  hint: {fail.hint}")
        for command in fail.hint.split("there: ", 1)[1].split("; "):
            libvirtd.run_in_ns(command)
        assert datapath.connect() == "upstream"
        assert fails(GuestNet(host).check()) == []
    finally:
        libvirtd.run_in_ns(["nft", "delete", "table", "inet", "vdfw"], check=False)


def set_forwarding(libvirtd: PrivateLibvirtd, value: int) -> None:
    """net.ipv4.ip_forward of the daemon's network namespace (what ``sysctl -w`` writes;
    procps is not in every root the tests run in)."""
    libvirtd.run_in_ns(["sh", "-c", f"echo {value} > /proc/sys/net/ipv4/ip_forward"])


def test_forwarding_off_and_a_route_into_the_subnet(libvirtd: PrivateLibvirtd,
                                                    datapath: Wiring) -> None:
    """ip_forward = 0 in the netns cuts the guest and doctor says so; a route into the
    network's subnet on another device (a VPN's) takes the guest's replies away, and
    doctor names it."""
    host = host_of(libvirtd)
    assert datapath.connect() == "upstream"
    set_forwarding(libvirtd, 0)
    try:
        assert datapath.connect(timeout=2).startswith("TimeoutError")
        [fail] = fails(GuestNet(host).check())
        assert fail.message.startswith("IP forwarding is off (net.ipv4.ip_forward = 0) while"
                                       " network 'default' is active")
        print(f"\n{fail.message}\n  hint: {fail.hint}")
    finally:
        set_forwarding(libvirtd, 1)
    assert datapath.connect() == "upstream"
    guest = ipaddress.IPv4Network(f"{datapath.guest_addr}/25", strict=False)
    dev = libvirtd.add_route(str(guest))
    try:
        assert datapath.connect(timeout=2).startswith("TimeoutError"), \
            "the replies to the guest follow the longer route"
        [fail] = fails(GuestNet(host).check())
        assert fail.message.startswith(f"network 'default' ({datapath.subnet} on")
        assert f"overlaps {guest} ({dev})" in fail.message
        print(f"\n{fail.message}\n  hint: {fail.hint}")
    finally:
        libvirtd.reset_links()
    assert datapath.connect() == "upstream"


def test_port53_taken(libvirtd: PrivateLibvirtd, libvirt_conn: Any, tmp_path: Path) -> None:
    """A program on 0.0.0.0:53 in the netns: net-start fails, doctor names it; once it is
    gone the network starts."""
    script = tmp_path / "dns.py"
    script.write_text(DNS)
    dns = libvirtd.popen_in_ns([sys.executable, str(script)], mounts=False,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert dns.stdout is not None and dns.stdout.readline() == "ready\n"
        with pytest.raises(Exception, match="Address already in use"):
            start_default(libvirtd, libvirt_conn)
        found = [f for f in GuestNet(host_of(libvirtd)).check() if "port 53" in f.message]
        assert [f.status for f in found] == [Status.FAIL]
        comm = Path(f"/proc/{dns.pid}/comm").read_text().strip()
        assert f"{comm} (pid " in found[0].message
        print(f"\n{found[0].message}\n  hint: {found[0].hint}")
    finally:
        dns.kill()
        dns.wait()
    time.sleep(0.2)
    libvirt_conn.networkLookupByName("default").create()
    found = [f for f in GuestNet(host_of(libvirtd)).check() if "port 53" in f.message]
    assert [f.status for f in found] == [Status.PASS]


LENS = Path("/usr/share/augeas/lenses/libvirtd_network.aug")
NETWORK_CONF = "etc/libvirt/network.conf"


def backend_root(tmp: Path, backend: str) -> Path:
    """A root with this system's dpkg view of libvirt, its /proc, and a network.conf
    choosing BACKEND."""
    from virtdeb.system.dpkg import LIBVIRT_HINTS

    root = tmp / "root"
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", root / "var/lib/dpkg/status")
    for package in LIBVIRT_HINTS:
        listed = Path(f"/var/lib/dpkg/info/{package}.list")
        if listed.exists():
            shutil.copy(listed, info / listed.name)
    conf = root / NETWORK_CONF
    conf.parent.mkdir(parents=True)
    original = Path("/", NETWORK_CONF).read_text() if Path("/", NETWORK_CONF).exists() else ""
    conf.write_text(original + f'firewall_backend = "{backend}"\n')
    (root / "proc").symlink_to("/proc")  # the running kernel's state
    return root


@contextlib.contextmanager
def daemon_with(root: Path, tmp: Path, docker_drop: bool) -> Iterator[tuple[PrivateLibvirtd,
                                                                          Any, Host]]:
    """A private libvirtd reading ROOT's network.conf, after a Docker-like iptables-nft
    FORWARD DROP in its netns when asked; its connection and the Host doctor reads."""
    def conf(scratch: Path) -> None:
        shutil.copy(root / NETWORK_CONF, scratch / NETWORK_CONF)

    with PrivateLibvirtd(before_start=conf) as daemon:
        if docker_drop:
            daemon.run_in_ns(["iptables-nft", "-P", "FORWARD", "DROP"])
        conn = daemon.connect()
        try:
            yield daemon, conn, Host(root=root, uri=daemon.uri, netns=daemon.netns)
        finally:
            conn.close()


@contextlib.contextmanager
def guest_path(daemon: PrivateLibvirtd, conn: Any, tmp: Path) -> Iterator[Wiring]:
    """The default network started and the guest and upstream wired to it."""
    path = Wiring(daemon, tmp)
    try:
        net = start_default(daemon, conn)
        subnet = xml_subnet(net.XMLDesc(0))
        assert subnet is not None
        path.wire(subnet, net.bridgeName())
        yield path
    finally:
        path.close()


def test_nftables_backend_and_the_fix(tmp_path: Path) -> None:
    """libvirt's nftables backend.  On a kernel with tc's csum action: the guest gets
    through; with Docker's iptables-nft FORWARD DROP it does not, and doctor says why.  On
    a kernel without it (this machine kind: CONFIG_NET_ACT_CSUM is not set) the network
    does not start at all ("Failed to load TC action module"), and doctor says why.
    Either way virtdeb's plan sets firewall_backend = "iptables"; with it (libvirtd
    restarted) the guest gets through beside Docker's DROP; revert puts nftables back."""
    from virtdeb.journal import Journal

    if not LENS.exists():
        pytest.skip("libvirt < 10.4 (bookworm) has no network.conf and no nftables backend")
    if shutil.which("nft") is None:
        pytest.skip("nft not installed (nftables is in DEPS and SUITE_TEST_DEPS: a chroot"
                    " built before it was added lacks it)")
    root = backend_root(tmp_path, "nftables")
    csum = fw.tc_csum(Host(root=Path("/")))
    with daemon_with(root, tmp_path, docker_drop=False) as (daemon, conn, host):
        if csum is False:
            with pytest.raises(Exception, match="Failed to load TC action module"):
                start_default(daemon, conn)
            [fail] = fails(GuestNet(host).check())
            assert fail.message.startswith("libvirt's nftables backend needs tc's csum action")
        else:
            with guest_path(daemon, conn, tmp_path) as path:
                assert "libvirt_network" in daemon.run_in_ns(["nft", "list", "tables"]).stdout
                assert path.connect() == "upstream"
                assert fails(GuestNet(host).check()) == []
                daemon.run_in_ns(["iptables-nft", "-P", "FORWARD", "DROP"])
                assert path.connect(timeout=2).startswith("TimeoutError"), \
                    "Docker's DROP policy drops what libvirt's nftables table accepts"
                [fail] = fails(GuestNet(host).check())
                assert fail.message == ("guests' forwarded traffic is dropped by the"
                                        " iptables-nft FORWARD chain (policy DROP), which"
                                        " libvirt's nftables backend does not write to")
        print(f"\n{fail.message}\n  hint: {fail.hint}")
        changes = GuestNet(host).plan()
        print("".join(c.diff() for c in changes))
        Journal(host).apply(changes, "test guestnet")
    assert 'firewall_backend = "iptables"' in (root / NETWORK_CONF).read_text()
    with daemon_with(root, tmp_path, docker_drop=True) as (daemon, conn, host), \
            guest_path(daemon, conn, tmp_path) as path:
        assert path.connect() == "upstream"
        assert fails(GuestNet(host).check()) == []
        assert GuestNet(host).plan() == []
    Journal(Host(root=root)).revert()
    assert 'firewall_backend = "nftables"' in (root / NETWORK_CONF).read_text()


def test_port53_debian_dnsmasq_and_the_dropin(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                              tmp_path: Path) -> None:
    """Debian's dnsmasq daemon as it starts without a drop-in (every address): net-start
    fails and doctor names dnsmasq with the dnsmasq rule as hint; with the rule's drop-in
    (interface=lo, bind-interfaces) the daemon keeps off libvirt's address, net-start works."""
    from virtdeb.journal import Journal
    from virtdeb.rules.dnsmasq import DROPIN, Dnsmasq

    daemon_argv = ["dnsmasq", "--keep-in-foreground", "--user=root", "--pid-file",
                   "--no-resolv", "--no-hosts"]
    dns = libvirtd.popen_in_ns([*daemon_argv, "--conf-file=/dev/null"], mounts=False)
    try:
        wait_for_port53(libvirtd)
        with pytest.raises(Exception, match="Address already in use"):
            start_default(libvirtd, libvirt_conn)
        [found] = [f for f in GuestNet(host_of(libvirtd)).check() if "port 53" in f.message]
        assert found.status is Status.FAIL
        assert f"dnsmasq (pid {dns.pid})" in found.message
        assert found.hint.startswith("virtdeb apply dnsmasq")
        print(f"\n{found.message}\n  hint: {found.hint}")
    finally:
        dns.kill()
        dns.wait()
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: dnsmasq\nStatus: install ok installed\n"
                                             "Version: 2.90-4\n\n")
    (root / "etc/dnsmasq.d").mkdir(parents=True)
    Journal(Host(root=root)).apply(Dnsmasq(Host(root=root)).plan(), "test dnsmasq")
    dropin = root / DROPIN.lstrip("/")
    dns = libvirtd.popen_in_ns([*daemon_argv, f"--conf-file={dropin}"], mounts=False)
    try:
        wait_for_port53(libvirtd)
        libvirt_conn.networkLookupByName("default").create()
        [found] = [f for f in GuestNet(host_of(libvirtd)).check() if "port 53" in f.message]
        assert found.status is Status.PASS
    finally:
        dns.kill()
        dns.wait()


def wait_for_port53(libvirtd: PrivateLibvirtd) -> None:
    """Until something listens on TCP port 53 in the netns (any address)."""
    deadline = time.monotonic() + 10
    while ":0035 " not in libvirtd.run_in_ns(["cat", "/proc/net/tcp"]).stdout:
        assert time.monotonic() < deadline, "dnsmasq did not bind port 53"
        time.sleep(0.1)
