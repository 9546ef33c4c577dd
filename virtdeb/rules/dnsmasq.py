"""Rule ``dnsmasq`` (README.Debian "The default NAT network").

With the ``dnsmasq`` daemon package installed, Debian's dnsmasq binds to every
interface and keeps libvirt's own dnsmasq off its bridges.  The README's fix is
a drop-in, ``/etc/dnsmasq.d/00_libvirtd.conf``, with ``interface=lo`` and
``bind-interfaces`` (``bind-dynamic`` serves as well).  virtdeb owns that
drop-in (it is not another package's conffile); lines the administrator added
to it are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from virtdeb.changes import Change, Record
from virtdeb.edit import Editor
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register

DROPIN = "/etc/dnsmasq.d/00_libvirtd.conf"
LENS = "Dnsmasq.lns"
HEADER = "only bind to loopback by default (virtdeb, see README.Debian)"


@register
class Dnsmasq(Rule):
    name = "dnsmasq"
    title = "dnsmasq binds only to loopback"

    def _applies(self) -> bool:
        return self.host.installed("dnsmasq")

    def check(self) -> list[Finding]:
        if not self._applies():
            return [self.finding(Status.NA, "the dnsmasq daemon package is not installed",
                                 "libvirt only needs dnsmasq-base")]
        with Editor(self.host, DROPIN, LENS) as ed:
            missing = self._missing(ed)
        if not missing:
            return [self.finding(Status.PASS, f"{DROPIN} binds dnsmasq to loopback")]
        return [self.finding(Status.FAIL, f"system dnsmasq may take libvirt's bridges"
                             f" ({', '.join(missing)} missing in {DROPIN})",
                             "virtdeb apply dnsmasq")]

    @staticmethod
    def _missing(ed: Editor) -> list[str]:
        missing = []
        if "lo" not in ed.values("interface"):
            missing.append("interface=lo")
        if not ed.match("bind-interfaces") and not ed.match("bind-dynamic"):
            missing.append("bind-interfaces")
        return missing

    def plan(self) -> list[Change]:
        if not self._applies():
            return []
        with Editor(self.host, DROPIN, LENS, rule=self.name, own=True) as ed:
            missing = self._missing(ed)
            if missing and not ed.exists:
                ed.set("#comment", HEADER)
            if "interface=lo" in missing:
                ed.set("interface[last()+1]", "lo")
            if "bind-interfaces" in missing:
                ed.set("bind-interfaces", None)
        return with_restart(list(ed.changes), self.host, self.name)


# -- restarting the running daemon (issue 4) -----------------------------------
PIDFILE = "/run/dnsmasq/dnsmasq.pid"


def dnsmasq_running(host: Host) -> bool:
    """Whether the system dnsmasq daemon runs (its pidfile names a live dnsmasq)."""
    try:
        pid = int(host.path(PIDFILE).read_text().strip())
        comm = host.path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    return comm == "dnsmasq"


@dataclass
class RestartDnsmasq(Change):
    """``invoke-rc.d dnsmasq restart`` after an apply (``when="apply"``) or after the
    revert of the file changes it follows (``when="revert"``, placed before them).

    Only on a live root, and only when the daemon runs; never in tests on fake roots.
    """

    kind: ClassVar[str] = "restart-dnsmasq"
    rule: str
    target: str = "dnsmasq"
    when: str = "apply"

    def diff(self) -> str:
        return f"invoke-rc.d dnsmasq restart (after {self.when}, if it runs)\n"

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "when": self.when}

    def apply(self, host: Host) -> None:
        if self.when == "apply":
            _restart(host)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        if record.get("when") == "revert" and _restart(host):
            return "dnsmasq: restarted"
        return "dnsmasq: nothing to restart"


def _restart(host: Host) -> bool:
    if not host.is_live or not dnsmasq_running(host):
        return False
    host.run(["invoke-rc.d", "dnsmasq", "restart"])
    return True


def with_restart(changes: list[Change], host: Host, rule: str) -> list[Change]:
    """``changes`` wrapped in dnsmasq restarts when the live daemon runs."""
    if not changes or not host.is_live or not dnsmasq_running(host):
        return changes
    return [RestartDnsmasq(rule, when="revert"), *changes, RestartDnsmasq(rule)]
