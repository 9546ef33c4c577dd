"""Unit tests of rule ``guestnet`` on fake roots: a fake /proc tree, dpkg status and
sysctl files under tmp_path, and canned output of the firewall tools and ``ip``
(:class:`CannedHost`).  tests/test_guestnet_libvirtd.py runs the same checks on a
real libvirtd, its NAT network and real firewalls in private namespaces."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from virtdeb.errors import ParseError, SystemCommandError
from virtdeb.host import Host
from virtdeb.rules import Finding, Status
from virtdeb.rules.guestnet import GuestNet
from virtdeb.system import firewall as fw
from virtdeb.system import listeners, sysctl

NO_DAEMON = "qemu+unix:///system?socket=/nonexistent/virtdeb-test-sock"
LENS = Path("/usr/share/augeas/lenses/libvirtd_network.aug")
ACCEPT = "-P FORWARD ACCEPT\n"
DOCKER = ("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n"
          "-A FORWARD -o docker0 -j DOCKER\n")


class CannedHost(Host):
    """A Host whose commands answer from a table: argv (joined) -> stdout; a missing
    key is a command that is not installed, as Host.run reports it."""

    def __init__(self, root: Path, outputs: dict[str, str], uri: str = NO_DAEMON) -> None:
        super().__init__(root=root, uri=uri)
        self.outputs = outputs

    def run(self, argv: Sequence[str], *, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        key = " ".join(argv)
        for known, out in self.outputs.items():
            if key == known:
                return subprocess.CompletedProcess(list(argv), 0, out, "")
        if any(k.split()[0] == argv[0] for k in self.outputs):
            return subprocess.CompletedProcess(list(argv), 0, "", "")
        raise SystemCommandError(f"{argv[0]}: No such file or directory; is it installed?")


def status(root: Path, packages: dict[str, str]) -> None:
    path = root / "var/lib/dpkg/status"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"Package: {p}\nStatus: install ok installed\nVersion: {v}\n\n"
                            for p, v in packages.items()))
    info = root / "var/lib/dpkg/info"
    info.mkdir(exist_ok=True)
    for package in packages:
        if package.startswith("libvirt-daemon"):  # the owner of libvirtd
            (info / f"{package}.list").write_text("/usr/sbin\n/usr/sbin/libvirtd\n")


def write(root: Path, path: str, text: str) -> Path:
    real = root / path.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text(text)
    return real


def nft_json(*chains: tuple[str, str, str, str], rules: Sequence[dict[str, object]] = ())\
        -> str:
    items: list[dict[str, object]] = [{"metainfo": {"json_schema_version": 1}}]
    for family, table, name, policy in chains:
        items.append({"table": {"family": family, "name": table, "handle": 1}})
        items.append({"chain": {"family": family, "table": table, "name": name, "handle": 1,
                                "type": "filter", "hook": "forward", "prio": 0,
                                "policy": policy}})
    items += [{"rule": r} for r in rules]
    return json.dumps({"nftables": items})


def tools(legacy: str | None = None, nft_compat: str = ACCEPT, nft: str | None = None,
          flavor: str = "nf_tables") -> dict[str, str]:
    out = {"iptables -V": f"iptables v1.8.9 ({flavor})\n",
           "iptables-nft -S FORWARD": nft_compat,
           "iptables-legacy -S FORWARD": legacy or ACCEPT}
    if nft is not None:
        out["nft -j list ruleset"] = nft
    return out


def statuses(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.status.value, f.message) for f in findings]


def firewall(host: Host) -> list[Finding]:
    return GuestNet(host)._firewall("virbr0")


# -- parsers ----------------------------------------------------------------------
def test_parse_iptables_forward() -> None:
    chain = fw.parse_iptables_forward("iptables-nft", DOCKER)
    assert chain is not None and chain.drops and chain.policy == "DROP"
    chain = fw.parse_iptables_forward("iptables-nft", ACCEPT + "-A FORWARD -j REJECT\n")
    assert chain is not None and chain.drops and chain.drops_rest
    chain = fw.parse_iptables_forward("iptables-nft", ACCEPT + "-A FORWARD -i x -j DROP\n")
    assert chain is not None and not chain.drops
    assert fw.parse_iptables_forward("iptables-legacy", "") is None
    chain = fw.parse_iptables_forward("iptables-legacy", DOCKER + "-A FORWARD -i virbr0 -j"
                                      " ACCEPT\n")
    assert chain is not None and chain.drops and not chain.drops_guests("virbr0")
    assert chain.drops_guests("virbr1")


def test_parse_nft_forward_skips_iptables_nft_tables() -> None:
    text = nft_json(("ip", "filter", "FORWARD", "drop"),          # iptables-nft's: -S says
                    ("inet", "fw", "forward", "drop"),            # a native firewall
                    ("inet", "libvirt_network", "guest_cross", "accept"),
                    ("inet", "open", "fwd", "accept"),
                    rules=[{"family": "inet", "table": "open", "chain": "fwd",
                            "expr": [{"drop": None}]}])
    chains = {(c.where, c.chain): c.drops for c in fw.parse_nft_forward(text)}
    assert chains == {("nft table inet fw", "forward"): True,
                      ("nft table inet libvirt_network", "guest_cross"): False,
                      ("nft table inet open", "fwd"): True}
    accepted = nft_json(("inet", "fw", "forward", "drop"), rules=[
        {"family": "inet", "table": "fw", "chain": "forward",
         "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                             "right": "virbr0"}}, {"accept": None}]}])
    [chain] = fw.parse_nft_forward(accepted)
    assert chain.drops and not chain.drops_guests("virbr0") and chain.drops_guests("br1")
    with pytest.raises(SystemCommandError, match="unreadable JSON"):
        fw.parse_nft_forward("{")


# -- firewall backend and forward chains ----------------------------------------------
def test_bookworm_iptables_only_and_docker_in_the_same_table(tmp_path: Path) -> None:
    """libvirt 9.0 writes with iptables (-> iptables-nft): Docker's DROP there is passed by
    libvirt's own rules in the same chain."""
    status(tmp_path, {"libvirt-daemon": "9.0.0-4+deb12u2", "iptables": "1.8.9-2"})
    found = firewall(CannedHost(tmp_path, tools(nft_compat=DOCKER, nft=nft_json())))
    assert found[0].status is Status.NOTE
    assert "libvirt 9.0.0-4+deb12u2 has no /etc/libvirt/network.conf" in found[0].message
    assert "iptables only" in found[0].message
    assert [f.status for f in found[1:]] == [Status.PASS]


def test_legacy_drop_when_libvirt_writes_nft(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon": "9.0.0-4", "iptables": "1.8.9-2"})
    write(tmp_path, "/proc/net/ip_tables_names", "filter\nnat\n")
    found = firewall(CannedHost(tmp_path, tools(legacy=DOCKER, nft=nft_json())))
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert fail.message == ("guests' forwarded traffic is dropped by the iptables-legacy"
                            " FORWARD chain (policy DROP), which libvirt's iptables backend"
                            " does not write to")
    assert "iptables-legacy -I FORWARD -i virbr0 -j ACCEPT" in fail.hint


def test_legacy_not_asked_without_its_filter_table(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon": "9.0.0-4", "iptables": "1.8.9-2"})
    found = firewall(CannedHost(tmp_path, tools(legacy=DOCKER, nft=nft_json())))
    assert Status.FAIL not in [f.status for f in found]


def test_nftables_backend_next_to_docker(tmp_path: Path) -> None:
    """libvirt >= 10.4 without iptables takes nftables: Docker's iptables-nft DROP policy
    drops what libvirt's own table accepts (Debian bug #1090355)."""
    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "nftables": "1.1.3-1"})
    nft = nft_json(("inet", "libvirt_network", "guest_cross", "accept"))
    found = firewall(CannedHost(tmp_path, tools(nft_compat=DOCKER, nft=nft)))
    assert found[0].message.startswith("libvirt's firewall backend: nftables (libvirt 11.3.0-3,"
                                       " no firewall_backend in /etc/libvirt/network.conf")
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert "dropped by the iptables-nft FORWARD chain (policy DROP)" in fail.message
    assert fail.hint.startswith('set firewall_backend = "iptables" in /etc/libvirt/network.conf')


def test_native_nft_drop(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "iptables": "1.8.11-2"})
    found = firewall(CannedHost(tmp_path, tools(nft=nft_json(("inet", "fw", "forward", "drop")))))
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert "nft table inet fw forward chain (policy DROP)" in fail.message
    assert fail.hint == ("accept virbr0's traffic there: nft insert rule inet fw forward"
                         ' oifname "virbr0" ct state established,related accept;'
                         ' nft insert rule inet fw forward iifname "virbr0" accept')


def test_missing_tools_are_notes(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon": "9.0.0-4", "iptables": "1.8.9-2"})
    found = firewall(CannedHost(tmp_path, tools()))  # no nft
    assert ("NOTE", "nft is not installed: its forward rules are not checked") \
        in statuses(found)


class DeniedHost(CannedHost):
    """Firewall commands as a user who is not root: they fail."""

    def run(self, argv: Sequence[str], *, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        if argv[0] in ("iptables-nft", "iptables-legacy", "nft"):
            return subprocess.CompletedProcess(list(argv), 4, "", "Permission denied (you"
                                               " must be root)\n")
        return super().run(argv, check=check, input=input)


def test_not_root_is_a_note(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon": "9.0.0-4", "iptables": "1.8.9-2"})
    found = firewall(DeniedHost(tmp_path, tools(nft=nft_json())))
    notes = [f for f in found if f.message.startswith("cannot read the forward rules")]
    assert [f.message for f in notes] == [
        "cannot read the forward rules of iptables-nft: iptables-nft -S FORWARD failed (4):"
        " Permission denied (you must be root)",
        "cannot read the forward rules of nft: nft -j list ruleset failed (4): Permission"
        " denied (you must be root)"]
    assert {f.status for f in found} == {Status.NOTE}, "no PASS for rules not read"


def test_nftables_backend_without_nft_fails(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3"})
    found = firewall(CannedHost(tmp_path, {}))
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert fail.message == ("libvirt's backend is nftables but the nft command is missing:"
                            " the network cannot start")
    assert fail.hint.startswith("apt install nftables")


def test_no_libvirt(tmp_path: Path) -> None:
    assert statuses(firewall(CannedHost(tmp_path, {}))) == [("N/A", "no libvirt daemon"
                                                            " installed")]


@pytest.mark.skipif(not LENS.exists(), reason="libvirt < 10.4 (bookworm) has no network.conf"
                    " and no Libvirtd_network lens")
def test_network_conf_backend_and_bad_values(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "iptables": "1.8.11-2"})
    conf = write(tmp_path, "/etc/libvirt/network.conf",
                 '# firewall_backend = "iptables"\nfirewall_backend = "nftables"\n')
    host = CannedHost(tmp_path, tools(nft_compat=DOCKER, nft=nft_json()))
    found = firewall(host)
    assert found[0].message == ("libvirt's firewall backend: nftables (firewall_backend ="
                                " nftables in /etc/libvirt/network.conf (libvirt 11.3.0-3))")
    assert Status.FAIL in [f.status for f in found]
    conf.write_text('\nfirewall_backend = "ipfw"\n')
    with pytest.raises(ParseError) as err:
        firewall(CannedHost(tmp_path, {}))
    assert err.value.message.startswith("/etc/libvirt/network.conf:2: unknown firewall_backend"
                                        " 'ipfw'; set it to \"iptables\" or \"nftables\"")
    # the command line: one line, exit status 2, nothing written
    from virtdeb import cli

    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert cli.main(["doctor", "guestnet", "--root", str(tmp_path), "--connect", NO_DAEMON]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "/etc/libvirt/network.conf:2: unknown firewall_backend" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    conf.write_text("firewall_backend = nftables\n")  # unquoted: libvirt's lens refuses it
    with pytest.raises(ParseError, match="^/etc/libvirt/network.conf:1"):
        firewall(CannedHost(tmp_path, {}))
    conf.write_bytes(b"\xff\xfe")  # not text
    with pytest.raises(ParseError, match="^/etc/libvirt/network.conf:1: not UTF-8"):
        firewall(CannedHost(tmp_path, {}))


# -- IP forwarding ----------------------------------------------------------------------
def test_sysctl_files_in_order(tmp_path: Path) -> None:
    write(tmp_path, "/usr/lib/sysctl.d/50-default.conf", "net.ipv4.ip_forward = 1\n")
    write(tmp_path, "/usr/lib/sysctl.d/60-vpn.conf", "net.ipv4.ip_forward=1\n")
    write(tmp_path, "/etc/sysctl.d/60-vpn.conf", "# hides /usr/lib's\n-net/ipv4/ip_forward=0\n")
    write(tmp_path, "/etc/sysctl.conf", "#net.ipv4.ip_forward=1\n")
    os.symlink("../sysctl.conf", tmp_path / "etc/sysctl.d/99-sysctl.conf")
    got = [(a.where, a.value) for a in sysctl.assignments(Host(root=tmp_path))]
    assert got == [("/usr/lib/sysctl.d/50-default.conf:1", "1"),
                   ("/etc/sysctl.d/60-vpn.conf:2", "0")]


def test_forwarding_off(tmp_path: Path) -> None:
    write(tmp_path, "/proc/sys/net/ipv4/ip_forward", "0\n")
    write(tmp_path, "/etc/sysctl.d/90-hardening.conf", "net.ipv4.conf.all.forwarding = 0\n")
    rule = GuestNet(Host(root=tmp_path))
    found = rule._forwarding(active=True)
    assert [f.status for f in found] == [Status.FAIL, Status.WARN]
    assert found[0].hint == ("sysctl -w net.ipv4.ip_forward=1 (libvirt sets it when it starts"
                             " the network); remove /etc/sysctl.d/90-hardening.conf:1")
    assert found[1].message.startswith("/etc/sysctl.d/90-hardening.conf:1 sets"
                                       " net.ipv4.conf.all.forwarding = 0")
    assert [f.status for f in rule._forwarding(active=False)] == [Status.NOTE, Status.WARN]
    write(tmp_path, "/proc/sys/net/ipv4/ip_forward", "1\n")
    write(tmp_path, "/etc/sysctl.conf", "net.ipv4.ip_forward = 1\n")
    assert [f.status for f in rule._forwarding(active=True)] == [Status.PASS]


# -- port 53 ----------------------------------------------------------------------------
UDP = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
       "  timeout inode\n"
       "  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   0"
       "        0 4242 2 0000000000000000 0\n"
       "  2: 017AA8C0:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   0"
       "        0 5151 2 0000000000000000 0\n")
TCP6 = ("  sl  local_address                         remote_address                        st"
        " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n"
        "   1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n")


def fake_proc(root: Path, comm: str) -> None:
    write(root, "/proc/net/udp", UDP)
    write(root, "/proc/net/tcp6", TCP6)
    write(root, "/proc/net/tcp", UDP.split("\n")[0] + "\n")
    write(root, "/proc/77/comm", f"{comm}\n")
    (root / "proc/77/fd").mkdir()
    os.symlink("socket:[4242]", root / "proc/77/fd/5")
    os.symlink("socket:[4343]", root / "proc/77/fd/6")
    os.symlink("/dev/null", root / "proc/77/fd/0")
    write(root, "/proc/88/comm", "libvirt-dnsmasq\n")
    (root / "proc/88/fd").mkdir()
    os.symlink("socket:[5151]", root / "proc/88/fd/3")


def test_wildcard_listeners(tmp_path: Path) -> None:
    fake_proc(tmp_path, "named")
    found = listeners.wildcard_listeners(Host(root=tmp_path), 53)
    assert [(lst.proto, lst.address, lst.inode, lst.who()) for lst in found] == [
        ("udp", "0.0.0.0", 4242, "named (pid 77)"), ("tcp6", "::", 4343, "named (pid 77)")]


@pytest.mark.parametrize(("comm", "hint"), [("named", "listen-on"), ("dnsmasq",
                                            "virtdeb apply dnsmasq"), ("pihole-FTL", "make")])
def test_port53_finding(tmp_path: Path, comm: str, hint: str) -> None:
    fake_proc(tmp_path, comm)
    [finding] = GuestNet(Host(root=tmp_path))._port53(active=False)
    assert finding.status is Status.FAIL
    assert finding.message == (f"port 53 is taken on every address by {comm} (pid 77) on udp"
                               " 0.0.0.0, tcp6 ::: libvirt's dnsmasq cannot bind it (virsh"
                               " net-start default fails with \"Address already in use\")")
    assert hint in finding.hint


# -- the whole rule on libvirt's test driver (its 'default' is active on virbr0) ---------
def ip_outputs(route_dev: str) -> dict[str, str]:
    addr = [{"ifname": "virbr0", "addr_info": [{"family": "inet", "local": "192.168.122.1",
                                                "prefixlen": 24}]}]
    route = [{"dst": "default", "dev": "eth0"},
             {"dst": "192.168.122.0/24", "dev": "virbr0"},
             {"dst": "192.168.122.0/25", "dev": route_dev}]
    return {"ip -j -4 addr show": json.dumps(addr),
            "ip -j -4 route show table all": json.dumps(route)}


def test_collision_of_an_active_network(tmp_path: Path) -> None:
    status(tmp_path, {"libvirt-daemon": "9.0.0-4", "iptables": "1.8.9-2"})
    write(tmp_path, "/proc/sys/net/ipv4/ip_forward", "1\n")
    host = CannedHost(tmp_path, {**tools(nft=nft_json()), **ip_outputs("tun0")},
                      uri="test:///default")
    found = GuestNet(host).check()
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert fail.message == ("network 'default' (192.168.122.0/24 on virbr0) overlaps"
                            " 192.168.122.0/25 (tun0): guests' traffic to that range goes the"
                            " wrong way")
    host = CannedHost(tmp_path, {**tools(nft=nft_json()), **ip_outputs("virbr0")},
                      uri="test:///default")
    assert Status.FAIL not in [f.status for f in GuestNet(host).check()]


@pytest.mark.skipif(not LENS.exists(), reason="libvirt < 10.4 (bookworm) has no network.conf"
                    " and no Libvirtd_network lens")
def test_plan_switches_to_iptables_next_to_docker(tmp_path: Path) -> None:
    """nftables backend + Docker's iptables-nft DROP: the plan sets firewall_backend =
    "iptables" in network.conf (foreign: libvirt's conffile), journaled and revertible."""
    from virtdeb.journal import Journal

    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "iptables": "1.8.11-2",
                      "nftables": "1.1.3-1"})
    original = '#firewall_backend = "iptables"\nfirewall_backend = "nftables"\n'
    conf = write(tmp_path, "/etc/libvirt/network.conf", original)
    host = CannedHost(tmp_path, tools(nft_compat=DOCKER, nft=nft_json()))
    [fail] = [f for f in GuestNet(host).check() if f.status is Status.FAIL]
    assert "virtdeb apply guestnet" in fail.hint
    [change] = GuestNet(host).plan()
    assert change.foreign and change.target == "/etc/libvirt/network.conf"
    Journal(host).apply([change], "test guestnet")
    assert conf.read_text() == '#firewall_backend = "iptables"\nfirewall_backend = "iptables"\n'
    host = CannedHost(tmp_path, tools(nft_compat=DOCKER, nft=nft_json()))
    assert [f for f in GuestNet(host).check() if f.status is Status.FAIL] == []
    assert GuestNet(host).plan() == [], "a second run changes nothing"
    Journal(host).revert()
    assert conf.read_text() == original
    # a native nft DROP is not the backend's to fix: no plan, a hint
    conf.write_text(original)
    host = CannedHost(tmp_path, tools(nft=nft_json(("inet", "fw", "forward", "drop"))))
    assert GuestNet(host).plan() == []


@pytest.mark.parametrize(("config", "module", "expected"), [
    (None, False, None),
    ("# CONFIG_NET_ACT_CSUM is not set\n", False, False),
    ("CONFIG_NET_ACT_CSUM=y\n", False, True),
    ("CONFIG_NET_ACT_CSUM=m\n", False, False),
    ("CONFIG_NET_ACT_CSUM=m\n", True, True),
])
def test_tc_csum(tmp_path: Path, config: str | None, module: bool,
                 expected: bool | None) -> None:
    import gzip

    if config is not None:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/config.gz").write_bytes(gzip.compress(config.encode()))
    if module:
        write(tmp_path, f"/lib/modules/{os.uname().release}/kernel/net/sched/act_csum.ko.xz",
              "")
    assert fw.tc_csum(Host(root=tmp_path)) is expected


def test_nftables_backend_on_a_kernel_without_csum(tmp_path: Path) -> None:
    """libvirt's nftables backend cannot start a network without tc's csum action (seen:
    "Failed to load TC action module"): a FAIL with the switch to iptables as hint."""
    import gzip

    status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "nftables": "1.1.3-1"})
    write(tmp_path, "/proc/config.gz", "")
    (tmp_path / "proc/config.gz").write_bytes(gzip.compress(b"# CONFIG_NET_ACT_CSUM is not"
                                                            b" set\n"))
    found = firewall(CannedHost(tmp_path, tools(nft=nft_json())))
    [fail] = [f for f in found if f.status is Status.FAIL]
    assert fail.message == ("libvirt's nftables backend needs tc's csum action"
                            " (CONFIG_NET_ACT_CSUM), which this kernel lacks: the network fails"
                            " to start (\"Failed to load TC action module\")")
    assert fail.hint.startswith('set firewall_backend = "iptables" in /etc/libvirt/network.conf'
                                " (virtdeb apply guestnet")
