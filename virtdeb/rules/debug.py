"""Rule ``debug`` (README.Debian "Debugging"): libvirtd's log settings.

The README's tool is ``LIBVIRT_DEBUG=1`` in a client's environment
(``virtdeb debug -- COMMAND``).  For the daemon, persistent ``log_filters`` and
``log_outputs`` in /etc/libvirt/libvirtd.conf (``virtdeb debug --enable`` /
``--disable``, journaled, ``virtdeb revert`` restores the exact bytes).  The
rule only shows the current settings; it plans nothing by itself.
"""

from __future__ import annotations

import re

from virtdeb.edit import Editor
from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register

CONF = "/etc/libvirt/libvirtd.conf"
LENS = "Libvirtd.lns"
KEYS = ("log_level", "log_filters", "log_outputs")
# The example of libvirtd.conf and libvirt's debug-logs page.
DEFAULT_FILTERS = "1:qemu 1:libvirt 4:object 4:json 4:event 1:util"
DEFAULT_OUTPUTS = "1:file:/var/log/libvirt/libvirtd.log"
FILTER = re.compile(r"^[1-4]:\+?[A-Za-z0-9_.]+$")
OUTPUT = re.compile(r"^[1-4]:(stderr|journald|syslog:[A-Za-z0-9_.-]+|file:/[^\s\"]+)$")


def log_settings(host_conf: Editor) -> dict[str, str]:
    """The log keys set in libvirtd.conf (the last occurrence wins, as in libvirt)."""
    return {key: host_conf.last(key) or "" for key in KEYS if host_conf.match(key)}


def checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    words = value.split()
    if not words:
        raise UsageError(f"{what}: empty; give e.g. {DEFAULT_FILTERS!r}")
    for word in words:
        if not pattern.match(word):
            raise UsageError(f"{what}: {word!r} is not LEVEL:NAME with LEVEL 1-4"
                             " (see libvirt's logging docs); nothing was changed")
    return " ".join(words)


def logging_changes(host: Host, filters: str | None, outputs: str | None,
                    rule: str = "debug") -> list[Change]:
    """Set (strings) or remove (None) log_filters and log_outputs in libvirtd.conf.

    An existing key is changed where it is, every duplicate too; a new one is
    appended.  The file belongs to libvirt's daemon package: the change is ``foreign``.
    """
    if not host.path(CONF).exists():
        raise UsageError(f"{CONF} does not exist: is libvirt's daemon installed"
                         " (apt install libvirt-daemon-system)? (--root DIR names another system)")
    with Editor(host, CONF, LENS, rule=rule, foreign=True) as ed:
        for key, value in (("log_filters", filters), ("log_outputs", outputs)):
            if value is None:
                for rel in reversed(ed.match(key)):
                    ed.remove(rel)
            else:
                ed.ensure(key, value)
    return list(ed.changes)


@register
class Debug(Rule):
    name = "debug"
    title = "libvirt logging"
    postinst = False  # only on request: virtdeb debug --enable

    def check(self) -> list[Finding]:
        if not self.host.path(CONF).exists():
            return [self.finding(Status.NA, f"no {CONF}",
                                 "libvirt's daemon is not installed here (libvirt-daemon-system)")]
        with Editor(self.host, CONF, LENS, comments=False) as ed:  # read only
            settings = log_settings(ed)
        shown = ", ".join(f'{k}="{v}"' for k, v in settings.items()) or "libvirt's defaults"
        return [self.finding(Status.NOTE, f"libvirtd logging: {shown}",
                             "client side: virtdeb debug -- COMMAND (LIBVIRT_DEBUG=1);"
                             " daemon: virtdeb debug --enable / --disable")]
