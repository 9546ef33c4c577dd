"""CPU models against the host CPU: ``virtdeb cpu-check`` and its engine.

README.Debian ("CPU models and microcode"): a microcode update can take CPU
features away (TSX: ``hle``, ``rtm``); a domain whose custom CPU model needs
them then no longer starts ("Host CPU does not provide required features").
This module compares every defined domain's custom CPU with what the
hypervisor can give (``compareHypervisorCPU``, once per distinct definition),
names the missing features, and rewrites a definition on request: disable
just the missing features, or pick a named model the host can run, or
host-model.  A rewrite is a journaled :class:`DomainXMLChange`: ``virtdeb
revert`` defines the previous XML again, byte for byte.

The microcode part (marker, baseline, boot-time check) is at the end; the
maintainer entry (:mod:`virtdeb.maint`) calls it.  Only the standard library
is imported at module level (the apt hook uses the XML helpers).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from virtdeb import fsio
from virtdeb.changes import Change, ConflictError, Record
from virtdeb.errors import LibvirtError, UsageError, VirtdebError
from virtdeb.host import Host

log = logging.getLogger(__name__)

STRATEGIES = ("disable-missing", "model", "host-model")
XML_INACTIVE_SECURE = 2 | 1  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
LIST_PERSISTENT = 4  # VIR_CONNECT_LIST_DOMAINS_PERSISTENT
COMPARE_FAIL_INCOMPATIBLE = 1  # VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
BASELINE_EXPAND = 1  # VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
ERR_CPU_INCOMPATIBLE = 91  # VIR_ERR_CPU_INCOMPATIBLE
ERR_UNSUPPORTED = (3, 84)  # VIR_ERR_NO_SUPPORT, VIR_ERR_OPERATION_UNSUPPORTED
ERR_NO_DOMAIN = 42  # VIR_ERR_NO_DOMAIN
CHECK_HINT = "virtdeb cpu-check; fix with: virtdeb cpu-check --fix disable-missing"


# --------------------------------------------------------------------------- the XML
# The <cpu ...>...</cpu> (or <cpu .../>) element of a domain XML as libvirt formats it.
_CPU_SPAN = re.compile(r"(?ms)^([ \t]*)<cpu\b[^>]*?(?:/>|>.*?</cpu>)[ \t]*\n?")
_MISSING = re.compile(r"does not provide required features:\s*(.+?)\s*$", re.I)
_VENDOR = re.compile(r"vendor does not match(?: required CPU vendor (\S+))?", re.I)


@dataclass(frozen=True)
class DomainCPU:
    """What the comparison needs from one domain definition."""

    name: str
    uuid: str
    xml: str  # the whole inactive definition, as libvirt returned it
    cpu: ET.Element | None
    virttype: str
    arch: str | None
    machine: str | None
    emulator: str | None

    @property
    def custom(self) -> bool:
        return is_custom(self.cpu)

    @property
    def model(self) -> str:
        return model_of(self.cpu)

    @property
    def vendor(self) -> str | None:
        return None if self.cpu is None else (self.cpu.findtext("vendor") or "").strip() or None

    def key(self, cpu: ET.Element) -> tuple[str, str | None, str | None, str | None, str]:
        """What decides a comparison: one compare per distinct key."""
        return (normalise(cpu), self.emulator, self.arch, self.machine, self.virttype)


def parse_xml(text: str) -> ET.Element:
    """Parse XML from libvirt or from root-owned definitions (expat refuses entity bombs)."""
    return ET.fromstring(text)  # noqa: S314 - trusted, root-owned sources


def parse_domain(xml: str) -> DomainCPU:
    """The CPU-related parts of a domain XML (raises ET.ParseError)."""
    root = parse_xml(xml)
    ostype = root.find("os/type")
    return DomainCPU(
        name=(root.findtext("name") or "?").strip(),
        uuid=(root.findtext("uuid") or "").strip(),
        xml=xml,
        cpu=root.find("cpu"),
        virttype=root.get("type", "kvm"),
        arch=None if ostype is None else ostype.get("arch"),
        machine=None if ostype is None else ostype.get("machine"),
        emulator=(root.findtext("devices/emulator") or "").strip() or None,
    )


def model_of(cpu: ET.Element | None) -> str:
    return "" if cpu is None else (cpu.findtext("model") or "").strip()


def is_custom(cpu: ET.Element | None) -> bool:
    """A custom CPU with a named model that libvirt checks: what a microcode update breaks.

    ``check='none'`` (libvirt's own default CPU for a domain without one is
    ``qemu64`` so) is never checked: QEMU starts the guest with a warning.
    """
    return (cpu is not None and bool(model_of(cpu)) and cpu.get("mode", "custom") == "custom"
            and cpu.get("check") != "none")


def fragility(cpu: ET.Element | None) -> list[str]:
    """Why a custom CPU fails to start (rather than adapts) when the host loses a feature."""
    if cpu is None or not is_custom(cpu):
        return []
    reasons = []
    model = cpu.find("model")
    if model is not None and model.get("fallback") == "forbid":
        reasons.append("fallback=forbid")
    if cpu.get("match", "exact") == "exact":
        reasons.append("match=exact")
    return reasons


def normalise(cpu: ET.Element) -> str:
    """A canonical text of a CPU element: same meaning, same text."""
    def walk(el: ET.Element, sort: bool) -> str:
        attrs = "".join(f" {k}={v!r}" for k, v in sorted(el.attrib.items()))
        kids = [walk(c, False) for c in el]
        if sort:
            kids.sort()
        return f"<{el.tag}{attrs}>{(el.text or '').strip()}{''.join(kids)}</{el.tag}>"
    return walk(cpu, True)


def signature(cpu: ET.Element | None) -> list[str]:
    """What a CPU definition means (mode, model, vendor, feature policies)."""
    if cpu is None:
        return []
    out = [f"mode={cpu.get('mode', 'custom')}", f"model={model_of(cpu)}",
           f"vendor={(cpu.findtext('vendor') or '').strip()}"]
    out += sorted(f"{f.get('name')}={f.get('policy', 'require')}" for f in cpu.findall("feature"))
    return out


def parse_incompatible(message: str) -> tuple[list[str], str | None]:
    """(missing features, required vendor) from libvirt's incompatibility message.

    The vendor is None when the vendors match, "" when libvirt did not name it.
    """
    missing: list[str] = []
    vendor: str | None = None
    found = _MISSING.search(message)
    if found:
        missing = [f.strip() for f in found.group(1).split(",") if f.strip()]
    found = _VENDOR.search(message)
    if found:
        vendor = found.group(1) or ""
    return missing, vendor


def _quote(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;"))


def format_element(el: ET.Element, indent: str, step: str = "  ") -> str:
    """``el`` formatted the way libvirt formats XML (single quotes, two-space steps)."""
    attrs = "".join(f" {k}='{_quote(v)}'" for k, v in el.attrib.items())
    text = (el.text or "").strip()
    if not len(el) and not text:
        return f"{indent}<{el.tag}{attrs}/>\n"
    if not len(el):
        return f"{indent}<{el.tag}{attrs}>{_quote(text)}</{el.tag}>\n"
    inner = "".join(format_element(c, indent + step, step) for c in el)
    return f"{indent}<{el.tag}{attrs}>\n{inner}{indent}</{el.tag}>\n"


def replace_cpu(xml: str, cpu: ET.Element) -> str:
    """``xml`` with its ``<cpu>`` element replaced by ``cpu``, everything else untouched."""
    found = _CPU_SPAN.search(xml)
    if found is None:
        raise ValueError("the domain XML has no <cpu> element")
    return xml[: found.start()] + format_element(cpu, found.group(1)) + xml[found.end():]


def without_cpu(xml: str) -> str:
    """The domain XML minus its ``<cpu>`` element."""
    return _CPU_SPAN.sub("", xml, count=1)


def cpu_of(xml: str) -> ET.Element | None:
    return parse_xml(xml).find("cpu")


# ---------------------------------------------------------------------- comparing
@dataclass(frozen=True)
class Verdict:
    compatible: bool
    missing: tuple[str, ...] = ()
    vendor: str | None = None  # the vendor the CPU requires and the host is not
    message: str = ""

    def problem(self) -> str:
        if self.compatible:
            return "compatible"
        parts = []
        if self.vendor is not None:
            parts.append("host CPU vendor does not match"
                         + (f" (requires {self.vendor})" if self.vendor else ""))
        if self.missing:
            parts.append("missing features: " + ", ".join(self.missing))
        return "; ".join(parts) or self.message


def _libvirt_error(exc: Any, what: str) -> LibvirtError:
    return LibvirtError(f"{what}: {exc.get_error_message()}")


class Comparer:
    """compareHypervisorCPU over one connection, once per distinct definition."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.calls = 0
        self._cache: dict[tuple[str, str | None, str | None, str | None, str], Verdict] = {}
        self._models: dict[tuple[str | None, str | None, str | None, str],
                           list[tuple[str, str, bool]]] = {}
        self._features: dict[tuple[str, str], frozenset[str]] = {}

    def compare(self, dom: DomainCPU, cpu: ET.Element | None = None) -> Verdict:
        cpu = dom.cpu if cpu is None else cpu
        assert cpu is not None
        key = dom.key(cpu)
        if key not in self._cache:
            self._cache[key] = self._compare(dom, ET.tostring(cpu, encoding="unicode"))
        return self._cache[key]

    def _compare(self, dom: DomainCPU, cpu_xml: str) -> Verdict:
        import libvirt

        self.calls += 1
        try:
            result = self.conn.compareHypervisorCPU(dom.emulator, dom.arch, dom.machine,
                                                    dom.virttype, cpu_xml,
                                                    COMPARE_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError as exc:
            code, message = exc.get_error_code(), exc.get_error_message() or ""
            if code == ERR_CPU_INCOMPATIBLE:
                missing, vendor = parse_incompatible(message)
                return Verdict(False, tuple(missing), vendor, message)
            if code in ERR_UNSUPPORTED:
                raise LibvirtError(f"this libvirt connection cannot compare CPUs ({message});"
                                   " use a qemu:// URI") from exc
            return Verdict(False, (), None, message)  # e.g. an unknown model: report it
        return Verdict(result > 0, (), None, "")

    def models(self, dom: DomainCPU) -> list[tuple[str, str, bool]]:
        """(name, vendor, usable) of every custom model the hypervisor knows."""
        key = (dom.emulator, dom.arch, dom.machine, dom.virttype)
        if key not in self._models:
            import libvirt

            try:
                caps = self.conn.getDomainCapabilities(*key, 0)
            except libvirt.libvirtError as exc:
                raise _libvirt_error(exc, "getDomainCapabilities") from exc
            root = parse_xml(caps)
            self._models[key] = [
                ((m.text or "").strip(), m.get("vendor", "unknown"), m.get("usable") == "yes")
                for m in root.findall("cpu/mode[@name='custom']/model")]
        return self._models[key]

    def features(self, model: str, arch: str | None) -> frozenset[str]:
        """Every feature a named model has (libvirt's CPU map, expanded)."""
        key = (model, arch or "x86_64")
        if key not in self._features:
            import libvirt

            xml = f"<cpu><arch>{_quote(key[1])}</arch><model>{_quote(model)}</model></cpu>"
            try:
                out = self.conn.baselineCPU([xml], BASELINE_EXPAND)
                names = {f.get("name", "") for f in parse_xml(out).findall("feature")
                         if f.get("policy", "require") == "require"}
            except (libvirt.libvirtError, ET.ParseError):
                names = set()
            self._features[key] = frozenset(names)
        return self._features[key]


@dataclass
class DomainReport:
    dom: DomainCPU
    active: bool
    verdict: Verdict | None  # None: not a custom CPU model (nothing to compare)
    fragile: list[str]

    @property
    def broken(self) -> bool:
        return self.verdict is not None and not self.verdict.compatible

    def line(self) -> str:
        state = "running" if self.active else "shut off"
        what = self.dom.model + (f" ({self.dom.vendor})" if self.dom.vendor else "")
        assert self.verdict is not None
        text = "INCOMPATIBLE: " + self.verdict.problem() if self.broken else "compatible"
        if self.fragile:
            text += f" [fragile: {', '.join(self.fragile)}]"
        return f"{self.dom.name} ({state}, {what}): {text}"

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {"domain": self.dom.name, "uuid": self.dom.uuid, "active": self.active,
                "mode": None if self.dom.cpu is None else self.dom.cpu.get("mode", "custom"),
                "model": self.dom.model or None, "vendor": self.dom.vendor,
                "compared": v is not None, "compatible": None if v is None else v.compatible,
                "missing_features": [] if v is None else list(v.missing),
                "vendor_mismatch": v is not None and v.vendor is not None,
                "message": "" if v is None else v.message, "fragile": self.fragile}


class Progress:
    """``i/n`` on a terminal's stderr for long runs; silent otherwise."""

    def __init__(self, stream: TextIO | None, what: str, minimum: int = 50) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.what = what
        self.minimum = minimum
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if self.stream is None or total < self.minimum:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\rvirtdeb: {self.what} {done}/{total}")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def inspect(conn: Any, names: Sequence[str] = (),
            progress: Callable[[int, int], None] | None = None,
            comparer: Comparer | None = None) -> tuple[list[DomainReport], Comparer]:
    """Compare every defined domain's custom CPU (or only those named)."""
    import libvirt

    comparer = comparer or Comparer(conn)
    try:
        domains = conn.listAllDomains(LIST_PERSISTENT)
    except libvirt.libvirtError as exc:
        raise _libvirt_error(exc, "listing domains") from exc
    if names:
        known = {d.name() for d in domains}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"no defined domain named {unknown[0]!r}"
                             f" ({len(known)} domains are defined)")
        domains = [d for d in domains if d.name() in set(names)]
    reports = []
    for i, dom in enumerate(sorted(domains, key=lambda d: str(d.name())), 1):
        try:
            parsed = parse_domain(dom.XMLDesc(XML_INACTIVE_SECURE))
            active = bool(dom.isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == ERR_NO_DOMAIN:
                continue  # undefined meanwhile
            raise _libvirt_error(exc, f"domain {dom.name()}") from exc
        verdict = comparer.compare(parsed) if parsed.custom else None
        reports.append(DomainReport(parsed, active, verdict, fragility(parsed.cpu)))
        if progress:
            progress(i, len(domains))
    return reports, comparer


# ------------------------------------------------------------------------- fixing
def _insert_feature(cpu: ET.Element, name: str) -> None:
    children = list(cpu)
    at = next((i for i, c in enumerate(children) if c.tag == "numa"), len(children))
    feature = ET.Element("feature", {"policy": "disable", "name": name})
    cpu.insert(at, feature)


def disable_feature(cpu: ET.Element, name: str) -> bool:
    """Make ``name`` disabled (flip its policy or add it); False if it already was."""
    for feature in cpu.findall("feature"):
        if feature.get("name") == name:
            if feature.get("policy", "require") == "disable":
                return False
            feature.set("policy", "disable")
            return True
    _insert_feature(cpu, name)
    return True


def repair(dom: DomainCPU, cpu: ET.Element, comparer: Comparer,
           rounds: int = 4) -> tuple[ET.Element, Verdict]:
    """Drop a mismatching vendor and disable missing features until the host fits."""
    cpu = copy.deepcopy(cpu)
    verdict = comparer.compare(dom, cpu)
    for _ in range(rounds):
        if verdict.compatible:
            break
        changed = False
        vendor = cpu.find("vendor")
        if verdict.vendor is not None and vendor is not None:
            cpu.remove(vendor)
            changed = True
        for name in verdict.missing:
            changed = disable_feature(cpu, name) or changed
        if not changed:
            break
        verdict = comparer.compare(dom, cpu)
    return cpu, verdict


def family(model: str) -> str:
    return re.split(r"[-_]", model, maxsplit=1)[0].lower()


def _fix_model(dom: DomainCPU, comparer: Comparer) -> ET.Element:
    assert dom.cpu is not None
    models = comparer.models(dom)
    old_vendor = dom.vendor or next((v for n, v, _ in models if n == dom.model), "unknown")
    old_features = comparer.features(dom.model, dom.arch)
    ranked: list[tuple[tuple[bool, bool, int, int, str], ET.Element]] = []
    for name, vendor, usable in models:
        if not usable:
            continue
        cpu = copy.deepcopy(dom.cpu)
        model = cpu.find("model")
        assert model is not None
        model.text = name
        element = cpu.find("vendor")
        if element is not None and (element.text or "").strip() != vendor:
            cpu.remove(element)
        cpu, verdict = repair(dom, cpu, comparer)
        if not verdict.compatible:
            continue
        new_features = comparer.features(name, dom.arch)
        disabled = {f.get("name", "") for f in cpu.findall("feature")
                    if f.get("policy") == "disable"}
        dropped = len((old_features - new_features) | (old_features & disabled))
        rank = (vendor != old_vendor, family(name) != family(dom.model), dropped,
                -len(new_features), name)
        ranked.append((rank, cpu))
    if not ranked:
        raise VirtdebError(f"domain {dom.name}: no named CPU model this host can run fits;"
                           " use --fix host-model or --fix disable-missing")
    return min(ranked, key=lambda item: item[0])[1]


def _fix_host_model(dom: DomainCPU, comparer: Comparer) -> ET.Element:
    assert dom.cpu is not None
    cpu = copy.deepcopy(dom.cpu)
    cpu.set("mode", "host-model")
    cpu.attrib.pop("match", None)
    for tag in ("model", "vendor"):
        for element in cpu.findall(tag):
            cpu.remove(element)
    return repair(dom, cpu, comparer)[0]


def fixed_cpu(dom: DomainCPU, strategy: str, comparer: Comparer) -> ET.Element:
    """The CPU element that strategy makes of ``dom``'s (checked to fit the host)."""
    assert dom.cpu is not None
    if strategy == "disable-missing":
        cpu = repair(dom, dom.cpu, comparer)[0]
    elif strategy == "model":
        cpu = _fix_model(dom, comparer)
    elif strategy == "host-model":
        cpu = _fix_host_model(dom, comparer)
    else:
        raise UsageError(f"unknown fix strategy {strategy!r} (choose from"
                         f" {', '.join(STRATEGIES)})")
    verdict = comparer.compare(dom, cpu)
    if not verdict.compatible:
        raise VirtdebError(f"domain {dom.name}: --fix {strategy} cannot make the CPU fit"
                           f" this host ({verdict.problem()}); try another strategy")
    return cpu


def plan_fix(report: DomainReport, strategy: str, comparer: Comparer,
             uri: str) -> DomainXMLChange:
    cpu = fixed_cpu(report.dom, strategy, comparer)
    return DomainXMLChange(rule="cpu", target=f"domain {report.dom.name}",
                           uuid=report.dom.uuid, before=report.dom.xml,
                           after=replace_cpu(report.dom.xml, cpu), uri=uri,
                           active=report.active)


def _lookup(conn: Any, uuid: str, name: str) -> Any:
    import libvirt

    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == ERR_NO_DOMAIN:
            raise ConflictError(f"domain {name} ({uuid}) is no longer defined") from exc
        raise _libvirt_error(exc, f"domain {name}") from exc


def _define(conn: Any, xml: str, name: str) -> Any:
    import libvirt

    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise _libvirt_error(exc, f"defining domain {name}") from exc


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
        dom = _lookup(host.connect(), self.uuid, self.name)
        if dom.XMLDesc(XML_INACTIVE_SECURE) != self.before:
            raise ConflictError(f"{self.target}: its definition changed while virtdeb was"
                                " planning; run the command again")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "uuid": self.uuid, "uri": self.uri,
                "before": self.before, "after_cpu": signature(cpu_of(self.after))}

    def apply(self, host: Host) -> None:
        _define(host.connect(), self.after, self.name)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target, before = str(record["target"]), str(record["before"])
        name = target.removeprefix("domain ")
        conn = host.connect()
        dom = _lookup(conn, str(record["uuid"]), name)
        now = dom.XMLDesc(XML_INACTIVE_SECURE)
        if now == before:
            return f"{target}: already as before"
        if (without_cpu(now) != without_cpu(before)
                or signature(cpu_of(now)) != record["after_cpu"]):
            raise ConflictError(f"{target}: its definition changed since virtdeb rewrote it;"
                                " not reverted. The journal entry has the old XML")
        _define(conn, before, name)
        if _lookup(conn, str(record["uuid"]), name).XMLDesc(XML_INACTIVE_SECURE) != before:
            raise VirtdebError(f"{target}: libvirt stored the old definition differently;"
                               " compare it with the journal entry")
        running = " (running: takes effect at its next start)" if dom.isActive() else ""
        return f"{target}: previous definition restored{running}"


def verify(conn: Any, changes: Iterable[DomainXMLChange]) -> list[tuple[str, Verdict]]:
    """Compare again what was redefined, as libvirt now stores it (no cache)."""
    comparer = Comparer(conn)
    out = []
    for change in changes:
        dom = parse_domain(_lookup(conn, change.uuid, change.name).XMLDesc(XML_INACTIVE_SECURE))
        if dom.cpu is None:
            out.append((dom.name, Verdict(True)))
        else:
            out.append((dom.name, comparer.compare(dom)))
    return out


def fix_all(host: Host, reports: Sequence[DomainReport], strategy: str, comparer: Comparer,
            command: str, dry_run: bool = False,
            out: TextIO | None = None) -> tuple[list[DomainXMLChange], str | None]:
    """Plan (and unless dry_run, journal and make) the fixes of every broken domain."""
    changes = [plan_fix(r, strategy, comparer, host.uri) for r in reports if r.broken]
    if out is not None:
        for change in changes:
            out.write(change.diff())
    if dry_run or not changes:
        return changes, None
    from virtdeb.journal import Journal

    entry = Journal(host).apply(changes, command)
    return changes, None if entry is None else entry.id


# ---------------------------------------------------------------------- the command
def add_parser(sub: Any) -> None:
    from virtdeb.cli import add_host_options

    p = sub.add_parser("cpu-check", help="compare the domains' CPU models with the host CPU")
    add_host_options(p)
    p.add_argument("--domain", action="append", nargs="+", metavar="NAME", default=[],
                   help="only these domains (default: every defined domain)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--fix", choices=STRATEGIES,
                   help="rewrite the definitions that do not fit: disable just the missing"
                        " features, a named model the host can run, or host-model")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="with --fix: show the XML diff, define nothing")
    p.set_defaults(func=cmd_cpu_check)


def summary(reports: Sequence[DomainReport], calls: int) -> str:
    custom = [r for r in reports if r.verdict is not None]
    broken = sum(r.broken for r in custom)
    fragile = sum(bool(r.fragile) for r in custom)
    return (f"{len(custom)} of {len(reports)} domains have a custom CPU model:"
            f" {broken} incompatible with this host, {fragile} fragile;"
            f" {calls} distinct definitions compared")


def cmd_cpu_check(args: argparse.Namespace) -> int:
    from virtdeb.cli import host_from, locked

    host = host_from(args)
    names = [n for group in args.domain for n in group]
    fixed: list[tuple[str, Verdict]] = []
    entry_id = None
    with locked(host, args, writes=bool(args.fix)):  # a fix is planned under the lock
        progress = Progress(sys.stderr, "comparing CPUs")
        try:
            reports, comparer = inspect(host.connect(), names, progress)
        finally:
            progress.done()
        calls = comparer.calls
        if args.fix:
            changes, entry_id = fix_all(host, reports, args.fix, comparer,
                                        f"cpu-check --fix {args.fix}", args.dry_run,
                                        None if args.json else sys.stdout)
            if entry_id:
                fixed = verify(host.connect(), changes)
    if args.json:
        json.dump({"domains": [r.as_json() for r in reports],
                   "compared": calls, "journal": entry_id,
                   "fixed": [{"domain": n, "compatible": v.compatible,
                              "problem": v.problem()} for n, v in fixed]},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for r in reports:
            if r.verdict is not None:
                print(r.line())
        print(summary(reports, calls))
        _print_fix_result(args, reports, fixed, entry_id)
    still = {n for n, v in fixed if not v.compatible}
    if args.fix and not args.dry_run:
        return 1 if still else 0
    return 1 if any(r.broken for r in reports) else 0


def _print_fix_result(args: argparse.Namespace, reports: Sequence[DomainReport],
                      fixed: Sequence[tuple[str, Verdict]], entry_id: str | None) -> None:
    if not args.fix:
        if any(r.broken for r in reports):
            print("fix with: virtdeb cpu-check --fix disable-missing|model|host-model"
                  " [--dry-run]")
        return
    if args.dry_run:
        print("dry run: nothing defined")
        return
    if entry_id is None:
        print("nothing to fix")
        return
    active = {r.dom.name for r in reports if r.active}
    for name, verdict in fixed:
        later = "; running: the new definition takes effect at its next start" \
            if name in active else ""
        print(f"{name}: redefined, now {verdict.problem()}{later}")
    print(f"journal entry {entry_id}; undo with: virtdeb revert {entry_id}")


# ---------------------------------------------------------------------- microcode
STATE = "/var/lib/virtdeb/cpu"
MARKER = f"{STATE}/check-after-boot"
BASELINE = f"{STATE}/baseline.json"
LAST_REPORT = f"{STATE}/last-report.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write_json(host: Host, abspath: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    fsio.atomic_write(host.check_parent(abspath), text.encode(), abspath)


def read_json(host: Host, abspath: str) -> dict[str, Any] | None:
    """One of virtdeb's state files, or None when absent or unreadable."""
    try:
        data = fsio.read_bytes(host.path(abspath), abspath)
        value = None if data is None else json.loads(data)
    except (VirtdebError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cpuinfo(host: Host) -> tuple[list[str], str | None]:
    """(flags, microcode revision) of the first processor in /proc/cpuinfo."""
    flags: list[str] = []
    microcode = None
    try:
        text = host.path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return flags, microcode
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
        caps = host.connect().getCapabilities()
    except Exception as exc:  # noqa: BLE001 - libvirt is optional here
        log.info("cannot read the host CPU from libvirt: %s", exc)
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


def check_and_report(host: Host, reason: str, fix: bool) -> dict[str, Any] | None:
    """Compare every domain; log and save the report; fix if asked. None: no libvirt."""
    try:
        reports, comparer = inspect(host.connect())
    except VirtdebError as exc:
        log.warning("cpu: cannot check the domains' CPU models now: %s", exc.message)
        return None
    bad = [r for r in reports if r.broken or (r.verdict is not None and r.fragile)]
    for r in bad:
        log.warning("cpu: %s", r.line())
    result: dict[str, Any] = {"time": _now(), "reason": reason,
                              "domains": [r.as_json() for r in bad],
                              "broken": sum(r.broken for r in reports), "fixed": [],
                              "journal": None}
    if fix and result["broken"]:
        try:
            changes, entry = fix_all(host, reports, "disable-missing", comparer,
                                     f"maint {reason} cpu --fix disable-missing")
            result["fixed"] = [c.name for c in changes]
            result["journal"] = entry
            log.warning("cpu: redefined %s (undo: virtdeb revert %s)",
                        ", ".join(result["fixed"]), entry)
        except VirtdebError as exc:
            log.warning("cpu: fixing failed: %s", exc.message)
    elif result["broken"]:
        log.warning("cpu: check them with: virtdeb cpu-check; fix with:"
                    " virtdeb cpu-check --fix disable-missing")
    _write_json(host, LAST_REPORT, result)
    return result


def ensure_baseline(host: Host) -> None:
    """Record the host CPU's features once (postinst configure), so that the boot unit
    notices a change that came without a microcode package (BIOS update, new host)."""
    if read_json(host, BASELINE) is None:
        _write_json(host, BASELINE, {"time": _now(), **features_now(host)})


def microcode_triggered(host: Host, triggers: Sequence[str]) -> None:
    """A microcode package changed: baseline, marker for the next boot, and a check now."""
    _write_json(host, BASELINE, {"time": _now(), **features_now(host)})
    _write_json(host, MARKER, {"time": _now(), "triggers": list(triggers)})
    if host.config.get("cpu", "on_microcode") != "nothing":
        check_and_report(host, "microcode-update", fix=False)


def boot(host: Host) -> int:
    """After a boot: check when a microcode update is pending or the CPU changed."""
    marker = host.path(MARKER)
    baseline = read_json(host, BASELINE)
    now = features_now(host)
    pending = marker.exists()
    if not pending and (baseline is None or not features_differ(baseline, now)):
        log.info("cpu: no microcode update pending and the CPU features are unchanged")
        return 0
    policy = host.config.get("cpu", "on_microcode")
    if policy != "nothing":
        reason = "boot after microcode update" if pending else "boot: CPU features changed"
        if check_and_report(host, reason, fix=policy == "fix") is None:
            return 0  # libvirt not reachable: keep the marker, try at the next boot
    _write_json(host, BASELINE, {"time": _now(), **now})
    if pending:
        fsio.remove(marker, MARKER)
    return 0
