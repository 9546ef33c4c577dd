"""revert undoes a libvirt change on the URI recorded when it was applied.

The apply runs on ``test:///default`` (one shared driver state per process);
the revert's Host says ``qemu:///system`` (the command's default), which has
no daemon here: the recorded URI must be the one used.  ``--connect`` (the
``connect`` argument) overrides it.  Both libvirt kinds: a network defined,
started and marked autostart, and a domain redefined.
"""

from __future__ import annotations

import re
from pathlib import Path

import libvirt
import pytest

from virtdeb.cpu import XML_INACTIVE_SECURE
from virtdeb.effects.domain import DomainXMLChange
from virtdeb.effects.network import NetworkChange
from virtdeb.errors import LibvirtError
from virtdeb.host import DEFAULT_URI, Host
from virtdeb.journal import Journal

URI = "test:///default"
NOWHERE = "qemu+unix:///system?socket=/nonexistent/virtdeb-test-sock"
UUID = "6d1c3d5e-1b7a-4c55-9a53-0000000000{n:02d}"
NET = ("<network><name>vdrevert{n}</name><uuid>{uuid}</uuid><bridge name='vdrv{n}'/>"
       "<ip address='10.250.{n}.1' netmask='255.255.255.0'/></network>")


def network_change(n: int) -> NetworkChange:
    uuid = UUID.format(n=n)
    return NetworkChange("network", f"vdrevert{n}", uuid, define_xml=NET.format(n=n, uuid=uuid))


def test_network_revert_uses_the_recorded_uri(tmp_path: Path) -> None:
    conn = libvirt.open(URI)  # keeps the test driver's state for this process
    try:
        entry = Journal(Host(root=tmp_path, uri=URI)).apply([network_change(1)], "test")
        assert entry is not None and entry.uri == URI
        assert conn.networkLookupByName("vdrevert1").isActive()
        default = Host(root=tmp_path)  # what `virtdeb revert` builds without --connect
        assert default.uri == DEFAULT_URI
        _, messages = Journal(default).revert()
        assert "vdrevert1" not in conn.listNetworks() + conn.listDefinedNetworks(), messages
    finally:
        conn.close()


def test_connect_overrides_the_recorded_uri(tmp_path: Path) -> None:
    conn = libvirt.open(URI)
    try:
        Journal(Host(root=tmp_path, uri=URI)).apply([network_change(2)], "test")
        with pytest.raises(LibvirtError, match=re.escape(f"cannot connect to {NOWHERE}")):
            Journal(Host(root=tmp_path)).revert(connect=NOWHERE)
        assert conn.networkLookupByName("vdrevert2").isActive(), "nothing was reverted"
        Journal(Host(root=tmp_path)).revert(connect=URI)
        assert "vdrevert2" not in conn.listNetworks() + conn.listDefinedNetworks()
    finally:
        conn.close()


def test_domain_xml_revert_uses_the_recorded_uri(tmp_path: Path) -> None:
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName("test")
        before = dom.XMLDesc(XML_INACTIVE_SECURE)
        after = before.replace("</domain>", "<cpu mode='custom' match='exact'>"
                               "<model fallback='forbid'>qemu64</model></cpu></domain>")
        change = DomainXMLChange(rule="cpu", target="domain test", uuid=dom.UUIDString(),
                                 before=before, after=after, uri=URI)
        Journal(Host(root=tmp_path, uri=URI)).apply([change], "test")
        assert "qemu64" in conn.lookupByName("test").XMLDesc(XML_INACTIVE_SECURE)
        Journal(Host(root=tmp_path)).revert()
        assert conn.lookupByName("test").XMLDesc(XML_INACTIVE_SECURE) == before
    finally:
        conn.close()
