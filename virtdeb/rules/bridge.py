"""Rule ``bridge`` (README.Debian "Bridged network").

qemu-bridge-helper creates the TAP devices of session domains on a bridge; it
needs ``cap_net_admin+ep`` (the README's ``setcap cap_net_admin+ep
/usr/lib/qemu/qemu-bridge-helper``) or setuid root, and the bridges it may use
are the ``allow BRIDGE`` lines of /etc/qemu/bridge.conf.

The capability: virtdeb writes the ``security.capability`` xattr (a journaled
:class:`~virtdeb.effects.capability.CapabilityChange`, reverted to the exact old
bytes).  A qemu upgrade or reinstall replaces the file and drops the xattr; the
file trigger on the helper runs this rule again.  virtdeb sets the capability
only when bridging is wanted: ``[bridge] allow`` names a bridge, or virtdeb
set it before (its marker /var/lib/virtdeb/bridge-helper-cap, removed by the
revert that removes the capability).  A capability set by hand with no bridge
configured is left alone and not restored after an upgrade; the capability is
not another package's conffile, so the maintainer scripts need no consent.
On a filesystem without xattrs the rule warns; with ``[bridge] setuid_fallback
= yes`` it makes the helper setuid root through ``dpkg-statoverride --update
--add root root 4755`` instead (kept by dpkg across upgrades).

bridge.conf: one ``allow NAME`` per bridge of ``[bridge] allow``, edited with
virtdeb's Bridgeconf lens; the administrator's allow, deny and include lines
are kept.  No package ships /etc/qemu/bridge.conf (``dpkg -S`` finds none in
bookworm): it is the administrator's file, so the maintainer scripts change it
only with consent (``[virtdeb] allow_edit = bridge.conf``); virtdeb does not
remove it on purge.  Every bridge name is checked by :func:`bridge_names`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from virtdeb import fsio
from virtdeb.edit import Editor
from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.system import caps
from virtdeb.system.net import interface_name_problem

HELPER = "/usr/lib/qemu/qemu-bridge-helper"
CONF = "/etc/qemu/bridge.conf"
LENS = "Bridgeconf.lns"
MARKER = "/var/lib/virtdeb/bridge-helper-cap"
MARKER_TEXT = b"cap_net_admin+ep set on " + HELPER.encode() + b" by virtdeb\n"
HEADER = "bridges qemu-bridge-helper may use (virtdeb, see README.Debian)"
CONFIG = "/etc/virtdeb/virtdeb.conf"
MAX_INCLUDES = 16


def check_bridge_name(name: str, source: str = f"{CONFIG}: [bridge] allow") -> str:
    """``name`` if it is a valid bridge name, else a one-line UsageError naming ``source``."""
    problem = interface_name_problem(name)
    if problem:
        raise UsageError(f"{source}: {name!r} is not a valid bridge name"
                         f" ({problem}); fix the value and run again")
    return name


def bridge_names(host: Host) -> list[str]:
    """The bridges of ``[bridge] allow``, each checked by :func:`check_bridge_name`."""
    where = host.config.where("bridge", "allow")
    return [check_bridge_name(n, where) for n in host.config.words("bridge", "allow")]


def acl(host: Host) -> tuple[set[str], set[str]]:
    """(allowed, denied) names of bridge.conf and the files it includes."""
    allowed: set[str] = set()
    denied: set[str] = set()
    todo, seen = [CONF], set[str]()
    while todo and len(seen) < MAX_INCLUDES:
        path = todo.pop(0)
        if path in seen or not path.startswith("/"):
            continue
        seen.add(path)
        if not os.path.lexists(host.path(path)):
            continue  # nothing to parse: an absent file allows and denies nothing
        with Editor(host, path, LENS) as ed:
            allowed.update(v for v in ed.values("allow") if v)
            denied.update(v for v in ed.values("deny") if v)
            todo.extend(v for v in ed.values("include") if v)
    return allowed, denied


def _covered(name: str, names: set[str]) -> bool:
    return name in names or "all" in names


def _setuid_root(real: os.PathLike[str]) -> bool:
    st = os.lstat(real)
    return st.st_uid == 0 and bool(st.st_mode & stat.S_ISUID)


@dataclass(frozen=True)
class _State:
    """What check() and plan() both look at, worked out once."""

    names: list[str]  # the bridges of [bridge] allow
    wanted: bool  # bridging is wanted: names, or virtdeb set the capability before
    current: bytes | None  # the helper's security.capability
    no_xattr: caps.NoXattrSupport | None  # its filesystem has no xattrs
    setuid: bool
    has_cap: bool  # cap_net_admin+ep
    missing: list[str]  # names bridge.conf does not allow
    blocked: list[str]  # names bridge.conf denies


def _state(host: Host, *, read_conf: bool) -> _State:
    """``read_conf``: read bridge.conf even when no bridge is wanted (check reports a
    broken file; plan has nothing to change in it then)."""
    names = bridge_names(host)
    real = host.path(HELPER)
    try:
        current, no_xattr = caps.read(real, HELPER), None
    except caps.NoXattrSupport as exc:
        current, no_xattr = None, exc
    parsed = caps.parse(current) if current is not None else None
    allowed, denied = acl(host) if names or read_conf else (set(), set())
    return _State(names, bool(names) or host.path(MARKER).is_file(), current, no_xattr,
                  _setuid_root(real), parsed is not None and parsed.has(caps.CAP_NET_ADMIN),
                  [n for n in names if not _covered(n, allowed)],
                  [n for n in names if _covered(n, denied)])


@register
class Bridge(Rule):
    name = "bridge"
    title = "qemu-bridge-helper and bridge.conf"
    # a qemu upgrade replaces the helper and drops its file capability
    triggers = ("/usr/lib/qemu/qemu-bridge-helper", "/lib/qemu/qemu-bridge-helper")

    def _helper(self) -> bool:
        return self.host.path(HELPER).is_file()

    def check(self) -> list[Finding]:
        if not self._helper():
            return [self.finding(Status.NA, f"{HELPER} is not installed",
                                 "bridged session networking needs qemu-system-common")]
        state = _state(self.host, read_conf=True)
        return self._check_helper(state) + self._check_conf(state)

    def _check_helper(self, state: _State) -> list[Finding]:
        if state.no_xattr is not None and not state.setuid:
            fallback = self.host.config.flag("bridge", "setuid_fallback")
            return [self.finding(Status.WARN, state.no_xattr.message,
                                 "virtdeb apply bridge makes it setuid root (dpkg-statoverride)"
                                 if fallback else "to make it setuid root instead: [bridge]"
                                 f" setuid_fallback = yes in {CONFIG}, then virtdeb apply"
                                 " bridge")]
        if state.has_cap:
            return [self.finding(Status.PASS, "qemu-bridge-helper has cap_net_admin+ep")]
        if state.setuid:
            return [self.finding(Status.PASS, "qemu-bridge-helper is setuid root")]
        if state.wanted:
            return [self.finding(Status.FAIL, "qemu-bridge-helper lacks cap_net_admin+ep",
                                 "virtdeb apply bridge (setcap cap_net_admin+ep"
                                 f" {HELPER})")]
        return [self.finding(Status.NOTE, "bridged networking for session domains is not set"
                             " up (no capability on qemu-bridge-helper, no bridge allowed)",
                             f"[bridge] allow = br0 in {CONFIG}, then virtdeb apply bridge")]

    def _check_conf(self, state: _State) -> list[Finding]:
        out = []
        if state.blocked:
            out.append(self.finding(Status.WARN, f"{CONF} denies {', '.join(state.blocked)}"
                                    " (deny lines win over allow lines)",
                                    f"remove the deny line from {CONF} by hand"))
        if state.missing:
            out.append(self.finding(Status.FAIL, f"{CONF} does not allow"
                                    f" {', '.join(state.missing)}",
                                    "virtdeb apply bridge (postinst needs [virtdeb]"
                                    " allow_edit = bridge.conf)"))
        elif state.names:
            out.append(self.finding(Status.PASS, f"{CONF} allows {', '.join(state.names)}"))
        return out

    def plan(self) -> list[Change]:
        if not self._helper():
            return []
        state = _state(self.host, read_conf=False)
        return self._plan_helper(state) + self._plan_conf(state)

    def _plan_helper(self, state: _State) -> list[Change]:
        # here: doctor imports no effect (start-up time)
        from virtdeb.effects.capability import CapabilityChange
        from virtdeb.effects.file import FileChange
        from virtdeb.effects.statoverride import StatOverrideChange

        if not state.wanted or state.setuid or state.has_cap:
            return []
        if state.no_xattr is not None:
            if self.host.config.flag("bridge", "setuid_fallback"):
                return [StatOverrideChange(self.name, HELPER)]
            return []
        changes: list[Change] = [CapabilityChange(
            self.name, HELPER, state.current, caps.with_cap(state.current, caps.CAP_NET_ADMIN))]
        marker = fsio.read_bytes(self.host.path(MARKER), MARKER)
        if marker is None:
            changes.append(FileChange(self.name, MARKER, None, MARKER_TEXT, mode=0o644))
        return changes

    def _plan_conf(self, state: _State) -> list[Change]:
        if not state.missing:
            return []
        with Editor(self.host, CONF, LENS, rule=self.name, foreign=True) as ed:
            if not ed.exists:
                ed.set("#comment", HEADER)
            for name in state.missing:
                if ed.match("allow"):  # keep the allow lines together
                    ed.insert("allow[last()]", "allow", before=False)
                    ed.set("allow[last()]", name)
                else:
                    ed.set("allow[last()+1]", name)
        return list(ed.changes)
