"""The ``libvirt-network`` effect: define (optionally), start and autostart a libvirt
network; revert undoes each step that was made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from virtdeb.effects import Change, ConflictError, Record
from virtdeb.errors import LibvirtError
from virtdeb.host import Host
from virtdeb.system.libvirt import call, lookup_network, module


@dataclass
class NetworkChange(Change):
    """Define (optionally), start and autostart a libvirt network; revert undoes each."""

    kind: ClassVar[str] = "libvirt-network"
    rule: str
    target: str  # the network's name
    uuid: str
    define_xml: str | None = None
    start: bool = True
    autostart: bool = True
    note: str = field(default="", compare=False)

    def diff(self) -> str:
        out = []
        if self.define_xml is not None:
            out.append(f"define libvirt network {self.target}{self.note}:")
            out += ["  " + line for line in self.define_xml.splitlines()]
        if self.start:
            out.append(f"start libvirt network {self.target}")
        if self.autostart:
            out.append(f"mark libvirt network {self.target} autostart")
        return "\n".join(out) + "\n"

    def _current(self, host: Host) -> Any:
        net = lookup_network(host, self.target)
        if self.define_xml is not None and net is not None:
            raise ConflictError(f"libvirt network {self.target}: defined while virtdeb was"
                                " planning; run the command again")
        if self.define_xml is None and (net is None or net.UUIDString() != self.uuid):
            raise ConflictError(f"libvirt network {self.target}: removed or replaced while"
                                " virtdeb was planning; run the command again")
        return net

    def prepare(self, host: Host) -> None:
        self._current(host)

    def record(self, host: Host) -> Record:
        net = self._current(host)
        if net is None:
            return {"kind": self.kind, "target": self.target, "uuid": self.uuid,
                    "xml": None, "active": False, "autostart": False}
        libvirt = module()
        return {"kind": self.kind, "target": self.target, "uuid": self.uuid,
                "xml": net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE),
                "active": bool(net.isActive()), "autostart": bool(net.autostart())}

    def apply(self, host: Host) -> None:
        if self.define_xml is not None:
            call(f"libvirt network {self.target} (define)", host.connect().networkDefineXML,
                         self.define_xml)
        net = lookup_network(host, self.target)
        if net is None:
            raise LibvirtError(f"libvirt network {self.target}: not defined after all")
        if self.start and not net.isActive():
            net.create()
        if self.autostart and not net.autostart():
            net.setAutostart(1)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        name = record["target"]
        net = lookup_network(host, name)
        if net is None:
            if record["xml"] is None:
                return f"libvirt network {name}: already undefined"
            raise ConflictError(f"libvirt network {name}: removed since virtdeb changed it;"
                                " not reverted")
        if net.UUIDString() != record["uuid"]:
            raise ConflictError(f"libvirt network {name}: replaced (another UUID) since"
                                " virtdeb changed it; not reverted")
        if record["xml"] is None:
            if net.isActive():
                net.destroy()
            net.undefine()
            return f"libvirt network {name}: stopped and undefined (virtdeb had defined it)"
        done = []
        if not record["autostart"] and net.autostart():
            net.setAutostart(0)
            done.append("autostart off")
        if not record["active"] and net.isActive():
            net.destroy()
            done.append("stopped")
        return f"libvirt network {name}: {', '.join(done) or 'already as before'}"


@dataclass
class NetworkMove(NetworkChange):
    """Redefine an inactive network on another subnet (same name and UUID), start it and
    mark it autostart; revert stops it and defines the previous XML again."""

    kind: ClassVar[str] = "libvirt-network-move"

    def _current(self, host: Host) -> Any:
        net = lookup_network(host, self.target)
        if net is None or net.UUIDString() != self.uuid:
            raise ConflictError(f"libvirt network {self.target}: removed or replaced while"
                                " virtdeb was planning; run the command again")
        if net.isActive():
            raise ConflictError(f"libvirt network {self.target}: started while virtdeb was"
                                " planning; run the command again")
        return net

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        name = record["target"]
        net = lookup_network(host, name)
        if net is None or net.UUIDString() != record["uuid"]:
            raise ConflictError(f"libvirt network {name}: removed or replaced since virtdeb"
                                " moved it; not reverted")
        if net.isActive():
            net.destroy()
        if net.autostart() and not record["autostart"]:
            net.setAutostart(0)
        call(f"libvirt network {name} (define)", host.connect().networkDefineXML, record["xml"])
        return f"libvirt network {name}: stopped, its previous definition defined again"
