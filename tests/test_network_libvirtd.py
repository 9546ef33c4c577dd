"""Rule ``network`` against a real private libvirtd (tests/harness/libvirtd.py).

The daemon runs in its own network namespace; the Host points at it
(``uri``, ``netns``) and at a fake root in tmp_path holding libvirt's real
template.  Addresses and routes are put into the namespace with a veth pair.
Every test leaves no network and no dnsmasq behind (libvirt_conn resets; the
session fixture kills whatever is left in the namespace).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirtd import PrivateLibvirtd
from virtdeb.effects.network import NetworkChange
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import Status
from virtdeb.rules.network import BUILTIN_TEMPLATE, STATE, TEMPLATE, Network

pytestmark = pytest.mark.integration
REAL_TEMPLATE = Path(TEMPLATE)


def make_host(libvirtd: PrivateLibvirtd, tmp_path: Path, **overrides: str) -> Host:
    root = tmp_path / "root"
    template = root / TEMPLATE.lstrip("/")
    if not template.exists():
        template.parent.mkdir(parents=True)
        if REAL_TEMPLATE.exists():
            shutil.copy(REAL_TEMPLATE, template)
        else:
            template.write_text(BUILTIN_TEMPLATE)
    return Host(root=root, uri=libvirtd.uri, netns=libvirtd.netns, overrides=overrides)


def apply(host: Host) -> list[Any]:
    changes = Network(host).plan()
    Journal(host).apply(changes, "test network")
    return changes


def virbr0_addresses(libvirtd: PrivateLibvirtd) -> list[str]:
    out = libvirtd.ip("-j", "-4", "addr", "show", "dev", "virbr0").stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
            for a in link["addr_info"]]


def dnsmasq_pids(libvirtd: PrivateLibvirtd) -> list[int]:
    found = []
    for pid in libvirtd.pids():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                found.append(pid)
        except OSError:
            continue
    return found


def define_and_check(libvirtd: PrivateLibvirtd, libvirt_conn: Any, host: Host) -> str:
    """Apply the plan on a host without ``default``; check it runs; return its subnet."""
    try:
        changes = apply(host)
        define = [c for c in changes if isinstance(c, NetworkChange)]
        assert len(define) == 1 and define[0].define_xml is not None
        net = libvirt_conn.networkLookupByName("default")
        assert net.isActive() and net.autostart()
        [address] = virbr0_addresses(libvirtd)
        assert dnsmasq_pids(libvirtd), "libvirt's dnsmasq should serve the network"
        statuses = [f.status for f in Network(host)._check_network()]
        assert statuses == [Status.PASS, Status.PASS]
        assert Network(host).plan() == [], "a second apply must change nothing"
        _, messages = Journal(host).revert()
        assert "undefined (virtdeb had defined it)" in messages[-1]
        assert "default" not in libvirt_conn.listNetworks() + libvirt_conn.listDefinedNetworks()
        assert dnsmasq_pids(libvirtd) == []
        assert not host.path(STATE).exists()
        return str(ipaddress.IPv4Interface(address).network)
    finally:
        host.close()


def test_default_network_starts_with_autostart(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                               tmp_path: Path) -> None:
    host = make_host(libvirtd, tmp_path)
    assert define_and_check(libvirtd, libvirt_conn, host) == "192.168.122.0/24"


def test_address_in_192_168_122(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                tmp_path: Path) -> None:
    libvirtd.add_address("192.168.122.5/24")
    host = make_host(libvirtd, tmp_path)
    chosen = define_and_check(libvirtd, libvirt_conn, host)
    print(f"collision: address 192.168.122.5/24 -> virtdeb chose {chosen}")
    assert chosen == "192.168.123.0/24"


def test_route_over_192_168(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                            tmp_path: Path) -> None:
    libvirtd.add_route("192.168.0.0/16")
    host = make_host(libvirtd, tmp_path)
    chosen = define_and_check(libvirtd, libvirt_conn, host)
    print(f"collision: route 192.168.0.0/16 -> virtdeb chose {chosen}")
    assert chosen == "172.16.122.0/24"


def test_other_libvirt_network_counts(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                      tmp_path: Path) -> None:
    libvirt_conn.networkDefineXML(
        "<network><name>lab</name><bridge name='virbr7'/>"
        "<ip address='192.168.122.1' netmask='255.255.255.0'/></network>")
    host = make_host(libvirtd, tmp_path)
    assert define_and_check(libvirtd, libvirt_conn, host) == "192.168.123.0/24"


def test_existing_network_started_and_reverted(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                               tmp_path: Path) -> None:
    """A network the package defined: virtdeb only starts it; revert stops it again."""
    net = libvirt_conn.networkDefineXML(BUILTIN_TEMPLATE)
    host = make_host(libvirtd, tmp_path)
    try:
        assert [f.status for f in Network(host)._check_network()] == [Status.FAIL, Status.WARN]
        changes = apply(host)
        assert [type(c).__name__ for c in changes] == ["NetworkChange", "FileChange"]
        assert net.isActive() and net.autostart()
        assert json.loads(host.path(STATE).read_text())["defined_by_virtdeb"] is False
        Journal(host).revert()
        assert not net.isActive() and not net.autostart()
        assert net.name() in libvirt_conn.listDefinedNetworks()
        assert dnsmasq_pids(libvirtd) == []
    finally:
        host.close()


def test_removed_by_admin_is_not_recreated(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                           tmp_path: Path) -> None:
    host = make_host(libvirtd, tmp_path)
    try:
        apply(host)
        net = libvirt_conn.networkLookupByName("default")
        net.destroy()
        net.undefine()
        [finding] = Network(host)._check_network()
        assert finding.status is Status.NOTE and "removed by the administrator" in finding.message
        assert Network(host).plan() == []
    finally:
        host.close()
    forced = make_host(libvirtd, tmp_path, **{"network.recreate_default": "yes"})
    try:
        changes = apply(forced)
        assert isinstance(changes[0], NetworkChange) and changes[0].define_xml
        assert libvirt_conn.networkLookupByName("default").isActive()
    finally:
        forced.close()


def test_autostart_default_no_changes_nothing(libvirtd: PrivateLibvirtd, libvirt_conn: Any,
                                              tmp_path: Path) -> None:
    host = make_host(libvirtd, tmp_path, **{"network.autostart_default": "no"})
    try:
        assert [f.status for f in Network(host)._check_network()] == [Status.FAIL]
        assert Network(host).plan() == []
    finally:
        host.close()



def test_packaged_definition_on_a_used_subnet_is_moved(
        libvirtd: PrivateLibvirtd, libvirt_conn: Any, tmp_path: Path) -> None:
    """libvirt-daemon-config-network defines 'default' on 192.168.122.0/24 on install; a host
    that already has an address there cannot start it: virtdeb moves it, revert moves it back."""
    from virtdeb.effects.network import NetworkMove

    host = make_host(libvirtd, tmp_path)
    packaged = libvirt_conn.networkDefineXML(REAL_TEMPLATE.read_text() if REAL_TEMPLATE.exists()
                                             else BUILTIN_TEMPLATE)
    before = packaged.XMLDesc(1)
    libvirtd.add_address("192.168.122.5/24")
    [first, *_] = Network(host)._check_network()
    assert first.status is Status.FAIL
    assert "192.168.122.0/24 is in use on this host" in first.message
    assert "moves it to 192.168.123.0/24" in first.hint
    changes = apply(host)
    assert any(isinstance(c, NetworkMove) for c in changes)
    assert "moved from 192.168.122.0/24" in changes[0].diff()
    net = libvirt_conn.networkLookupByName("default")
    assert net.isActive() and net.autostart()
    assert net.UUIDString() == packaged.UUIDString()
    assert virbr0_addresses(libvirtd) == ["192.168.123.1/24"]
    assert [f.status for f in Network(host)._check_network()] == [Status.PASS, Status.PASS]
    assert Network(host).plan() == []
    _, messages = Journal(host).revert()
    assert any("its previous definition defined again" in m for m in messages)
    net = libvirt_conn.networkLookupByName("default")
    assert not net.isActive() and not net.autostart()
    assert net.XMLDesc(1) == before


def test_a_network_virtdeb_knows_is_not_moved(
        libvirtd: PrivateLibvirtd, libvirt_conn: Any, tmp_path: Path) -> None:
    """Once virtdeb has looked after an admin's 'default', a collision is only reported."""
    host = make_host(libvirtd, tmp_path)
    libvirt_conn.networkDefineXML(BUILTIN_TEMPLATE)
    state = host.path(STATE)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text('{"defined_by_virtdeb": false, "network": "default"}\n')
    libvirtd.add_address("192.168.122.5/24")
    changes = Network(host).plan()
    assert [type(c).__name__ for c in changes] == ["NetworkChange"]
    assert changes[0].define_xml is None  # type: ignore[attr-defined]
