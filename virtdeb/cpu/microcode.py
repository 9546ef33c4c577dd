"""Microcode: the baseline of the host CPU's features, the "check after boot" marker
and the boot-time check.  Each returns the changes to make; virtdeb.maint applies them
(virtdeb.outcome.apply), one journal entry per maintainer action."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from virtdeb import fsio
from virtdeb.cpu.compare import inspect
from virtdeb.cpu.fix import plan_fixes
from virtdeb.cpu.report import text_lines
from virtdeb.cpu.state import BASELINE, LAST_REPORT, MARKER, read_json
from virtdeb.cpu.xml import parse_xml
from virtdeb.effects import Change
from virtdeb.effects.file import FileChange
from virtdeb.errors import VirtdebError
from virtdeb.host import Host
from virtdeb.system import libvirt as lv

log = logging.getLogger(__name__)

CPUINFO = "/proc/cpuinfo"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _state(host: Host, abspath: str, data: dict[str, Any] | None) -> FileChange:
    """The change that makes state file ``abspath`` hold ``data`` (None: removes it)."""
    before = fsio.read_bytes(host.path(abspath), abspath)
    after = None if data is None else \
        (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()
    return FileChange("cpu", abspath, before, after)


def _changed(*changes: FileChange) -> list[Change]:
    """The state changes that change something."""
    return [c for c in changes if c.before != c.after]


@dataclass
class Checked:
    """A check of every domain: the report, and the changes that record it (the fixes, if
    asked, then the report file), for the caller to apply."""

    report: dict[str, Any]
    changes: list[Change]


def cpuinfo(host: Host) -> tuple[list[str], str | None]:
    """(flags, microcode revision) of the first processor in /proc/cpuinfo."""
    flags: list[str] = []
    microcode = None
    try:
        data = fsio.read_bytes(host.path(CPUINFO), CPUINFO)
    except VirtdebError as exc:
        log.warning("cpu: %s", exc.message)
        return flags, microcode
    text = (data or b"").decode("utf-8", "replace")
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("flags", "Features") and not flags:
            flags = sorted(set(value.split()))
        elif key == "microcode" and microcode is None:
            microcode = value.strip()
        elif not line.strip() and flags:
            break
    return flags, microcode


def libvirt_features(host: Host) -> list[str] | None:
    """The host CPU features libvirt sees (getCapabilities), or None when unreachable."""
    try:
        caps = lv.call("getCapabilities", host.connect().getCapabilities)
    except VirtdebError as exc:  # libvirt is optional here
        log.info("cannot read the host CPU from libvirt: %s", exc.message)
        return None
    return sorted({f.get("name", "") for f in parse_xml(caps).findall("host/cpu/feature")})


def features_now(host: Host, with_libvirt: bool = True) -> dict[str, Any]:
    flags, microcode = cpuinfo(host)
    return {"cpuinfo_flags": flags, "microcode": microcode,
            "libvirt_features": libvirt_features(host) if with_libvirt else None}


def features_differ(old: dict[str, Any], new: dict[str, Any]) -> bool:
    for key in ("cpuinfo_flags", "microcode", "libvirt_features"):
        if old.get(key) is not None and new.get(key) is not None and old[key] != new[key]:
            return True
    return False


def check_and_report(host: Host, reason: str, fix: bool) -> Checked | None:
    """Compare every domain and log what does not fit; the report and the changes that
    save it (and, when ``fix``, rewrite the broken domains).  None: no libvirt."""
    try:
        reports, comparer = inspect(host.connect())
    except VirtdebError as exc:
        log.warning("cpu: cannot check the domains' CPU models now: %s", exc.message)
        return None
    bad = [r for r in reports if r.broken or (r.verdict is not None and r.fragile)]
    for line in text_lines(bad):  # one line per CPU definition, as cpu-check
        log.warning("cpu: %s", line)
    result: dict[str, Any] = {"time": _now(), "reason": reason,
                              "domains": [r.as_json() for r in bad],
                              "broken": sum(r.broken for r in reports), "fixed": []}
    fixes: list[Change] = []
    if fix and result["broken"]:
        try:
            planned = plan_fixes(reports, "disable-missing", comparer, host.uri)
            result["fixed"] = [c.name for c in planned]
            fixes.extend(planned)
        except VirtdebError as exc:
            log.warning("cpu: fixing failed: %s", exc.message)
    elif result["broken"]:
        log.warning("cpu: check them with: virtdeb cpu-check; fix with:"
                    " virtdeb cpu-check --fix disable-missing")
    result["fleet"] = fleet_check(host)
    return Checked(result, fixes + _changed(_state(host, LAST_REPORT, result)))


def fleet_check(host: Host) -> dict[str, Any] | None:
    """The saved fleet baseline (``virtdeb cpu-baseline --save``) against this host now."""
    from virtdeb.cpu.drift import check_local  # the fleet engine: only when asked

    try:
        result = check_local(host)
    except VirtdebError as exc:
        log.warning("cpu: cannot compare the saved fleet baseline now: %s", exc.message)
        return None
    for problem in [] if result is None else result["problems"]:
        log.warning("cpu: %s", problem)
    return result


def ensure_baseline(host: Host) -> list[Change]:
    """Record the host CPU's features once (postinst configure), so that the boot unit
    notices a change that came without a microcode package (BIOS update, new host)."""
    if read_json(host, BASELINE) is not None:
        return []
    return _changed(_state(host, BASELINE, {"time": _now(), **features_now(host)}))


def microcode_triggered(host: Host, triggers: Sequence[str]) -> list[Change]:
    """A microcode package changed: baseline, marker for the next boot, and a check now."""
    changes = _changed(_state(host, BASELINE, {"time": _now(), **features_now(host)}),
                       _state(host, MARKER, {"time": _now(), "triggers": list(triggers)}))
    if host.config.get("cpu", "on_microcode") != "nothing":
        checked = check_and_report(host, "microcode-update", fix=False)
        changes += [] if checked is None else checked.changes
    return changes


def boot(host: Host) -> list[Change]:
    """After a boot: check when a microcode update is pending or the CPU changed; the
    changes (fixes when configured, the report, the new baseline, the marker gone)."""
    marker = host.path(MARKER)
    baseline = read_json(host, BASELINE)
    now = features_now(host)
    pending = marker.exists()
    if not pending and (baseline is None or not features_differ(baseline, now)):
        log.info("cpu: no microcode update pending and the CPU features are unchanged")
        return []
    changes: list[Change] = []
    policy = host.config.get("cpu", "on_microcode")
    if policy != "nothing":
        reason = "boot after microcode update" if pending else "boot: CPU features changed"
        checked = check_and_report(host, reason, fix=policy == "fix")
        if checked is None:
            return []  # libvirt not reachable: keep the marker, try at the next boot
        changes += checked.changes
    return changes + _changed(_state(host, BASELINE, {"time": _now(), **now}),
                              *([_state(host, MARKER, None)] if pending else []))
