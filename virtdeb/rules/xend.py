"""Rule ``xend`` (README.Debian "Xen"): xend's unix server for libvirt.

libvirt talks to xend through its unix server: ``(xend-unix-server yes)``.
The http server is enabled only when the administrator asks for it
(``[xend] http_server = yes``), and then always together with
``(xend-address localhost)``: otherwise every user and host can reach it.
Xen 4.5 and later have no xend: then the rule does not apply.
"""

from __future__ import annotations

import re

from virtdeb.edit import Editor
from virtdeb.effects import Change
from virtdeb.rules import Finding, Rule, Status, register

CONF = "/etc/xen/xend-config.sxp"
LENS = "Xendline.lns"


def _wanted(http: bool) -> dict[str, str]:
    wanted = {"xend-unix-server": "yes", "xend-http-server": "yes" if http else "no"}
    if http:
        wanted["xend-address"] = "localhost"
    return wanted


def _commented_example(ed: Editor, key: str) -> str | None:
    """The last comment that is ``key``'s commented-out example, e.g. ``#(key yes)``."""
    pattern = re.compile(r"^\(" + re.escape(key) + r"(\s|\))")
    commented = [rel for rel in ed.match("#comment") if pattern.match(ed.get(rel) or "")]
    return commented[-1] if commented else None


@register
class Xend(Rule):
    name = "xend"
    title = "Xen: xend unix server"

    def _applies(self) -> bool:
        return self.host.path(CONF).exists() or self.host.path(CONF).is_symlink()

    def check(self) -> list[Finding]:
        if not self._applies():
            return [self.finding(Status.NA, f"no {CONF}: this host has no xend",
                                 "Xen 4.5 and later have no xend; libvirt uses libxl")]
        http = self.host.config.flag("xend", "http_server")
        with Editor(self.host, CONF, LENS) as ed:
            unix = ed.last("xend-unix-server")
            http_now = ed.last("xend-http-server")
            address = ed.last("xend-address")
        out = []
        if unix == "yes":
            out.append(self.finding(Status.PASS, "xend unix server is enabled"))
        else:
            out.append(self.finding(Status.FAIL, "xend unix server is not enabled",
                                    f"libvirt needs (xend-unix-server yes) in {CONF}:"
                                    " virtdeb apply xend"))
        if http_now == "yes" and address != "localhost":
            out.append(self.finding(Status.FAIL, "xend http server listens beyond localhost",
                                    "every user and host can reach it: set (xend-address"
                                    " localhost) with virtdeb apply xend"))
        elif http_now == "yes" and not http:
            out.append(self.finding(Status.WARN, "xend http server is on (localhost only)",
                                    "every local user can reach it; [xend] http_server = no"
                                    " in /etc/virtdeb/virtdeb.conf and virtdeb apply xend"))
        elif http and http_now != "yes":
            out.append(self.finding(Status.WARN, "xend http server is off but configured on",
                                    "virtdeb apply xend turns it on, bound to localhost"))
        else:
            state = "on, localhost only" if http_now == "yes" else "off"
            out.append(self.finding(Status.PASS, f"xend http server is {state}"))
        return out

    def plan(self) -> list[Change]:
        if not self._applies():
            return []
        wanted = _wanted(self.host.config.flag("xend", "http_server"))
        with Editor(self.host, CONF, LENS, rule=self.name, foreign=True) as ed:
            for key, value in wanted.items():
                if key == "xend-http-server" and value == "no" and \
                        ed.last(key) in (None, "no"):
                    continue  # absent means off: leave the file alone
                ed.ensure(key, value, after=_commented_example(ed, key))
        return list(ed.changes)
