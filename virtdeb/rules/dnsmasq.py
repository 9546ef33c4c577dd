"""Rule ``dnsmasq`` (README.Debian "The default NAT network").

With the ``dnsmasq`` daemon package installed, Debian's dnsmasq binds to every
interface and keeps libvirt's own dnsmasq off its bridges.  The README's fix is
a drop-in, ``/etc/dnsmasq.d/00_libvirtd.conf``, with ``interface=lo`` and
``bind-interfaces`` (``bind-dynamic`` serves as well).  virtdeb owns that
drop-in (it is not another package's conffile); lines the administrator added
to it are kept.
"""

from __future__ import annotations

from virtdeb.edit import Editor
from virtdeb.effects import Change
from virtdeb.rules import Finding, Rule, Status, register

DROPIN = "/etc/dnsmasq.d/00_libvirtd.conf"
LENS = "Dnsmasq.lns"
HEADER = "only bind to loopback by default (virtdeb, see README.Debian)"


@register
class Dnsmasq(Rule):
    name = "dnsmasq"
    title = "dnsmasq binds only to loopback"
    # files of the dnsmasq daemon package (/usr/sbin/dnsmasq is dnsmasq-base's)
    triggers = ("/etc/init.d/dnsmasq", "/lib/systemd/system/dnsmasq.service",
                "/usr/lib/systemd/system/dnsmasq.service")

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
        from virtdeb.effects.service import with_restart  # here: doctor imports no effect

        return with_restart(list(ed.changes), self.host, self.name)
