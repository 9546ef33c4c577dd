"""The ``domain-xml`` effect: redefine one libvirt domain; revert defines the exact
previous XML again."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from virtdeb.cpu import XML_INACTIVE_SECURE
from virtdeb.cpu.xml import cpu_of, signature, without_cpu
from virtdeb.effects import Change, ConflictError, Record
from virtdeb.errors import VirtdebError
from virtdeb.host import Host
from virtdeb.system import libvirt as lv


def lookup_domain(conn: Any, uuid: str, name: str) -> Any:
    """The domain to redefine; a conflict when it is gone."""
    dom = lv.lookup_domain(conn, uuid, name)
    if dom is None:
        raise ConflictError(f"domain {name} ({uuid}) is no longer defined")
    return dom


def define_domain(conn: Any, xml: str, name: str) -> Any:
    return lv.call(f"defining domain {name}", conn.defineXML, xml)


@dataclass
class DomainXMLChange(Change):
    """Redefine one libvirt domain; revert defines the exact previous XML again."""

    kind: ClassVar[str] = "domain-xml"
    rule: str
    target: str  # "domain NAME"
    uuid: str
    before: str  # XMLDesc(INACTIVE|SECURE) when planned
    after: str
    uri: str = ""
    active: bool = False
    # A domain definition is the administrator's: maint never changes one on its own.
    foreign: bool = True
    note: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.target.removeprefix("domain ")

    def diff(self) -> str:
        out = "".join(difflib.unified_diff(self.before.splitlines(True),
                                           self.after.splitlines(True),
                                           f"a/{self.target}", f"b/{self.target}"))
        if self.active:
            out += (f"# {self.name} is running: the new definition takes effect at its"
                    " next start\n")
        return out

    def prepare(self, host: Host) -> None:
        dom = lookup_domain(host.connect(), self.uuid, self.name)
        if dom.XMLDesc(XML_INACTIVE_SECURE) != self.before:
            raise ConflictError(f"{self.target}: its definition changed while virtdeb was"
                                " planning; run the command again")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "uuid": self.uuid, "uri": self.uri,
                "before": self.before, "after_cpu": signature(cpu_of(self.after))}

    def apply(self, host: Host) -> None:
        define_domain(host.connect(), self.after, self.name)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target, before = str(record["target"]), str(record["before"])
        name = target.removeprefix("domain ")
        conn = host.connect()
        dom = lookup_domain(conn, str(record["uuid"]), name)
        now = dom.XMLDesc(XML_INACTIVE_SECURE)
        if now == before:
            return f"{target}: already as before"
        if (without_cpu(now) != without_cpu(before)
                or signature(cpu_of(now)) != record["after_cpu"]):
            raise ConflictError(f"{target}: its definition changed since virtdeb rewrote it;"
                                " not reverted. The journal entry has the old XML")
        define_domain(conn, before, name)
        if lookup_domain(conn, str(record["uuid"]), name).XMLDesc(XML_INACTIVE_SECURE) != before:
            raise VirtdebError(f"{target}: libvirt stored the old definition differently;"
                               " compare it with the journal entry")
        running = " (running: takes effect at its next start)" if dom.isActive() else ""
        return f"{target}: previous definition restored{running}"
