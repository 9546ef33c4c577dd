"""Unit tests of rule ``network``: subnet choice, the template rewrite, packages."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from virtdeb.host import Host
from virtdeb.rules import Status
from virtdeb.rules.network import (
    BUILTIN_TEMPLATE,
    FIRST,
    Network,
    NoFreeSubnet,
    candidates,
    firewall_backend,
    firewall_packages,
    network_xml,
    pick_subnet,
    xml_subnet,
)
from virtdeb.system import net as sysnet

N = ipaddress.ip_network
REAL_TEMPLATE = Path("/usr/share/libvirt/networks/default.xml")


def nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [N(c, strict=False) for c in cidrs]


@pytest.mark.parametrize(("used", "expected"), [
    ([], "192.168.122.0/24"),
    (["192.0.2.0/24"], "192.168.122.0/24"),
    (["192.168.122.5/24"], "192.168.123.0/24"),          # an address in the subnet
    (["192.168.122.5/32"], "192.168.123.0/24"),          # a /32 address
    (["192.168.122.128/25"], "192.168.123.0/24"),        # a longer prefix inside it
    (["192.168.120.0/22"], "192.168.124.0/24"),          # a shorter prefix around it
    (["192.168.122.0/24", "192.168.123.0/24"], "192.168.124.0/24"),
    (["192.168.0.0/16"], "172.16.122.0/24"),             # a route over all 192.168.x
    (["192.168.0.0/16", "172.16.0.0/12"], "10.0.122.0/24"),
    (["192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/16"], "10.1.122.0/24"),
    (["0.0.0.0/0"], "192.168.122.0/24"),                 # default route ignored
    (["0.0.0.0/1", "128.0.0.0/1"], "192.168.122.0/24"),  # VPN split default ignored
    (["192.0.0.0/7"], "192.168.122.0/24"),               # shorter than /8: ignored
    (["192.168.0.0/16", "0.0.0.0/0"], "172.16.122.0/24"),
    (["fd00::/8", "::/0", "2001:db8::1/128"], "192.168.122.0/24"),  # IPv6 ignored
    (["127.0.0.0/8", "169.254.0.0/16"], "192.168.122.0/24"),
])
def test_pick_subnet(used: list[str], expected: str) -> None:
    assert pick_subnet(nets(*used)) == N(expected)


def test_pick_subnet_never_overlaps() -> None:
    used = nets("192.168.122.7/24", "192.168.124.0/23", "192.168.128.0/17", "172.20.0.0/14")
    chosen = pick_subnet(used)
    assert chosen == N("192.168.123.0/24")
    assert not any(chosen.overlaps(u) for u in used if u.version == 4)


def test_pick_subnet_preferred_first() -> None:
    assert pick_subnet([], N("10.9.8.0/24")) == N("10.9.8.0/24")  # type: ignore[arg-type]
    assert pick_subnet(nets("10.9.8.1/24"), N("10.9.8.0/24")) == FIRST  # type: ignore[arg-type]


def test_pick_subnet_none_free() -> None:
    with pytest.raises(NoFreeSubnet, match="no free subnet.*define it by hand"):
        pick_subnet(nets("192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/8"))


def test_candidates_are_documented_sequence() -> None:
    seq = list(candidates())
    assert seq[0] == FIRST and seq[1] == N("192.168.123.0/24")
    assert seq[132] == N("192.168.254.0/24") and seq[133] == N("172.16.122.0/24")
    assert seq[-1] == N("10.255.122.0/24")
    assert len(seq) == len(set(seq)) == 133 + 16 + 256


@pytest.mark.skipif(not REAL_TEMPLATE.exists(), reason="libvirt-daemon-config-network absent")
def test_builtin_template_is_the_real_one() -> None:
    assert BUILTIN_TEMPLATE.split() == REAL_TEMPLATE.read_text().split()


def test_network_xml_moves_subnet() -> None:
    xml = network_xml(BUILTIN_TEMPLATE, N("10.3.122.0/24"),  # type: ignore[arg-type]
                      "0b1ad9e6-7c9e-4f5e-9a7f-4e2f7c2a1b11")
    assert xml_subnet(xml) == N("10.3.122.0/24")
    assert "address=\"10.3.122.1\"" in xml and "netmask=\"255.255.255.0\"" in xml
    assert "start=\"10.3.122.2\"" in xml and "end=\"10.3.122.254\"" in xml
    assert "<uuid>0b1ad9e6-7c9e-4f5e-9a7f-4e2f7c2a1b11</uuid>" in xml
    assert "192.168.122" not in xml
    same = network_xml(BUILTIN_TEMPLATE, FIRST, "0b1ad9e6-7c9e-4f5e-9a7f-4e2f7c2a1b11")
    assert "start=\"192.168.122.2\"" in same


def test_xml_subnet_prefix_form() -> None:
    assert xml_subnet("<network><ip address='10.1.2.3' prefix='16'/></network>") == \
        N("10.1.0.0/16")
    assert xml_subnet("<network><ip family='ipv6' address='fd00::1' prefix='64'/></network>") \
        is None
    assert xml_subnet("<network>") is None


def _status(root: Path, lines: dict[str, str]) -> None:
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text("".join(f"Package: {p}\nStatus: install ok installed\nVersion: {v}\n\n"
                              for p, v in lines.items()))
    (root / "var/lib/dpkg/info").mkdir(exist_ok=True)
    for package in lines:  # dpkg's file list: the daemon's owner gives libvirt's version
        if package in ("libvirt-daemon", "libvirt-daemon-driver-network"):
            (root / f"var/lib/dpkg/info/{package}.list").write_text("/usr/sbin/libvirtd\n")


def test_firewall_packages(tmp_path: Path) -> None:
    _status(tmp_path, {"libvirt-daemon": "9.0.0-4+deb12u2"})
    assert firewall_packages(Host(root=tmp_path)) == ("iptables",)
    _status(tmp_path, {"libvirt-daemon": "10.10.0-3"})
    assert firewall_packages(Host(root=tmp_path)) == ("iptables", "nftables")


def test_firewall_backend_through_libvirts_lens(tmp_path: Path) -> None:
    """Libvirtd_network (libvirt >= 10.4 ships it): a file it refuses is a WARN, no regex."""
    lens = Path("/usr/share/augeas/lenses/libvirtd_network.aug")
    if not lens.exists():
        pytest.skip("libvirt < 10.4 (bookworm) has no network.conf and no Libvirtd_network lens")
    _status(tmp_path, {"libvirt-daemon-driver-network": "11.3.0-3", "dnsmasq-base": "2.90",
                       "bridge-utils": "1.7", "iptables": "1.8"})
    conf = tmp_path / "etc/libvirt/network.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('# firewall_backend = "iptables"\nfirewall_backend = "nftables"\n')
    assert firewall_packages(Host(root=tmp_path)) == ("nftables",)
    conf.write_text('firewall_backend = "iptables"\n')
    assert firewall_backend(Host(root=tmp_path)) == "iptables"
    findings = Network(Host(root=tmp_path))._check_packages()
    assert [f.status for f in findings] == [Status.PASS], findings
    assert "iptables installed" in findings[0].message
    conf.write_text('firewall_backend = "nftables"\n')
    findings = Network(Host(root=tmp_path))._check_packages()
    assert [f.status for f in findings] == [Status.WARN]
    assert "nftables" in findings[0].message
    conf.write_text("firewall_backend = nftables\n")  # unquoted: libvirt's lens refuses it
    findings = Network(Host(root=tmp_path))._check_packages()
    assert [f.status for f in findings] == [Status.WARN]
    assert f"{conf.relative_to(tmp_path).as_posix()}" in findings[0].hint
    assert "network.conf:1" in findings[0].hint


def test_package_findings(tmp_path: Path) -> None:
    _status(tmp_path, {"libvirt-daemon": "9.0.0-4", "dnsmasq-base": "2.90", "nftables": "1"})
    rule = Network(Host(root=tmp_path))
    [finding] = rule._check_packages()
    assert finding.status is Status.WARN
    assert "bridge-utils, iptables" in finding.message
    _status(tmp_path, {"libvirt-daemon": "9.0.0-4", "dnsmasq-base": "2.90",
                       "bridge-utils": "1.7", "iptables": "1.8"})
    [finding] = Network(Host(root=tmp_path))._check_packages()
    assert finding.status is Status.PASS


def test_unreachable_libvirt_is_a_warning(tmp_path: Path) -> None:
    host = Host(root=tmp_path, uri=f"qemu+unix:///system?socket={tmp_path}/nosock")
    findings = Network(host)._check_network()
    assert [f.status for f in findings] == [Status.WARN]
    assert "cannot connect" in findings[0].hint


def test_used_networks_of_this_host() -> None:
    """The real `ip -j` output parses (read-only on the host's own namespace)."""
    used = sysnet.used_networks(Host())
    assert all(n.version == 4 for n in used)
    assert N("127.0.0.0/8") in used


def test_autostart_default_no_only_checks(tmp_path: Path) -> None:
    host = Host(root=tmp_path, uri="test:///default",
                overrides={"network.autostart_default": "no"})
    assert Network(host).plan() == []
