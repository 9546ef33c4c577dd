"""A fleet's CPU: what every host can give, and which guests can move where.

For many libvirt hosts (URIs), in parallel; each of the two rounds that ask the
hosts (1 and 3) waits at most ``timeout`` seconds for a host:

1. each host's domain capabilities: its host-model CPU, the named models with
   ``usable`` and their blockers; the host-model expanded to its full feature set;
   the defined domains' CPU definitions;
2. a migration-safe CPU for all of them: ``baselineHypervisorCPU(...,
   VIR_CONNECT_BASELINE_CPU_MIGRATABLE)`` over the hosts' host-model CPUs (asked of
   the host with the newest libvirt), and the newest named model usable everywhere
   (newest = most features, as libvirt expands it), with the next better model and
   what it lacks on each host where it is not usable;
3. on every host: ``compareHypervisorCPU`` of the baseline (it must be >= 1) and of
   every other host's guests' CPUs: the migration matrix, with the missing features
   of each "cannot" from the FAIL_INCOMPATIBLE error.

The result is a plain dict (:meth:`Fleet.as_json`), which is what ``--json``
prints, what ``--save`` records and what :func:`drift` compares: a host that
lost features since the saved run, and the guests that can no longer move to it.
Everything that talks to libvirt is in :class:`LibvirtHost`; the rest is pure.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from virtdeb import fsio
from virtdeb.cpu import ERR_UNSUPPORTED, microcode
from virtdeb.cpu.compare import Verdict
from virtdeb.cpu.xml import (
    format_element,
    is_custom,
    model_of,
    normalise,
    parse_incompatible,
    parse_xml,
)
from virtdeb.errors import LibvirtError, VirtdebError
from virtdeb.host import DEFAULT_URI, Host

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 20.0
FLEET_STATE = f"{microcode.STATE}/fleet.json"
BASELINE_MIGRATABLE = 2  # VIR_CONNECT_BASELINE_CPU_MIGRATABLE
BASELINE_EXPAND = 1  # VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
COMPARE_FAIL_INCOMPATIBLE = 1  # VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
ERR_CPU_INCOMPATIBLE = 91  # VIR_ERR_CPU_INCOMPATIBLE
XML_INACTIVE = 2  # VIR_DOMAIN_XML_INACTIVE
LIST_PERSISTENT = 4  # VIR_CONNECT_LIST_DOMAINS_PERSISTENT
ERR_NO_DOMAIN = 42  # VIR_ERR_NO_DOMAIN
# the connection failed, not the comparison: VIR_ERR_NO_CONNECT, _INVALID_CONN,
# _SYSTEM_ERROR (e.g. "Cannot recv data"), _RPC
ERR_CONNECTION = (5, 6, 38, 39)
MATRIX_ROWS = 15  # more guests than this: the matrix shows only those that cannot move


# ------------------------------------------------------------------ pure: parsing
@dataclass(frozen=True)
class Model:
    name: str
    vendor: str
    usable: bool
    blockers: tuple[str, ...] | None = None  # None: libvirt did not say (libvirt < 9.x)


@dataclass(frozen=True)
class Caps:
    """What one host's ``getDomainCapabilities()`` says about CPUs."""

    arch: str
    virttype: str
    model: str  # host-model's model
    vendor: str
    features: tuple[tuple[str, str], ...]  # host-model's (name, policy), as listed
    models: tuple[Model, ...]

    def usable(self) -> set[str]:
        return {m.name for m in self.models if m.usable}

    def get(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)


def parse_domcaps(xml: str) -> Caps:
    """The CPU part of a domainCapabilities document (raises ValueError if it has none)."""
    root = parse_xml(xml)
    host_model = root.find("cpu/mode[@name='host-model']")
    if host_model is None or host_model.get("supported", "yes") != "yes":
        raise ValueError("the domain capabilities offer no host-model CPU")
    custom = root.find("cpu/mode[@name='custom']")
    blockers: dict[str, tuple[str, ...]] = {}
    models: list[Model] = []
    if custom is not None:
        for b in custom.findall("blockers"):
            blockers[b.get("model", "")] = tuple(f.get("name", "") for f in b.findall("feature"))
        for m in custom.findall("model"):
            name = (m.text or "").strip()
            usable = m.get("usable") == "yes"
            models.append(Model(name, m.get("vendor", "unknown"), usable,
                                () if usable else blockers.get(name)))
    return Caps(
        arch=(root.findtext("arch") or "x86_64").strip(),
        virttype=(root.findtext("domain") or "kvm").strip(),
        model=(host_model.findtext("model") or "").strip(),
        vendor=(host_model.findtext("vendor") or "").strip(),
        features=tuple((f.get("name", ""), f.get("policy", "require"))
                       for f in host_model.findall("feature")),
        models=tuple(models))


def host_model_xml(caps: Caps, vendor: bool = True) -> str:
    """The host-model CPU as a custom ``<cpu>`` (what baselineHypervisorCPU takes)."""
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = caps.model
    if vendor and caps.vendor:
        ET.SubElement(cpu, "vendor").text = caps.vendor
    for name, policy in caps.features:
        ET.SubElement(cpu, "feature", {"policy": policy, "name": name})
    return ET.tostring(cpu, encoding="unicode")


def model_xml(name: str) -> str:
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = name
    return ET.tostring(cpu, encoding="unicode")


def required_features(cpu_xml: str) -> list[str]:
    """The features a ``<cpu>`` requires (of an expanded CPU: all it has)."""
    return sorted({f.get("name", "") for f in parse_xml(cpu_xml).findall("feature")
                   if f.get("policy", "require") in ("require", "force")})


def pretty_cpu(cpu_xml: str) -> str:
    """A ``<cpu>`` formatted as libvirt does, ready for a domain XML (``virsh define``)."""
    return format_element(parse_xml(cpu_xml), "")


@dataclass(frozen=True)
class Guest:
    """One defined domain's CPU, as far as migration is concerned."""

    home: str  # the URI of its host
    name: str
    active: bool
    mode: str  # custom | host-model | host-passthrough | maximum | default
    model: str
    arch: str | None
    virttype: str
    cpu_xml: str | None  # what is compared elsewhere: custom CPUs only
    checked: bool  # a custom CPU libvirt checks (check != 'none')

    @property
    def key(self) -> str:
        return f"{self.name}@{self.home}"


def parse_guest(home: str, xml: str, active: bool) -> Guest:
    """From the domain XML a migration would carry (the live one of a running guest)."""
    root = parse_xml(xml)
    cpu = root.find("cpu")
    ostype = root.find("os/type")
    mode = "default" if cpu is None else cpu.get("mode", "custom")
    model = model_of(cpu)
    if mode == "custom" and not model:
        mode = "default"  # only topology or NUMA: libvirt's default model
    return Guest(home=home, name=(root.findtext("name") or "?").strip(), active=active,
                 mode=mode, model=model, arch=None if ostype is None else ostype.get("arch"),
                 virttype=root.get("type", "kvm"),
                 cpu_xml=ET.tostring(cpu, encoding="unicode") if mode == "custom" and cpu
                 is not None else None,
                 checked=is_custom(cpu))


@dataclass(frozen=True)
class Move:
    """Can ``guest`` move to ``target``?  ``can`` None: unknown."""

    can: bool | None
    state: str  # home | yes | no | adapts | unchecked | passthrough | no-answer
    missing: tuple[str, ...] = ()
    vendor: str | None = None
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"can": self.can, "state": self.state, "missing": list(self.missing),
                "vendor_mismatch": self.vendor is not None, "message": self.message}


def move_without_compare(guest: Guest, target: str) -> Move | None:
    """The verdicts that need no comparison (None: compare the guest's CPU there)."""
    if target == guest.home:
        return Move(True, "home")
    if guest.mode in ("host-passthrough", "maximum"):
        return Move(None, "passthrough", message=f"{guest.mode}: moves only between hosts"
                    " with the same CPU and microcode")
    if guest.mode == "host-model":
        return Move(True, "adapts", message="host-model: takes the target host's CPU when it"
                    " starts there (not live-migratable to a smaller host)")
    if guest.mode == "default" or not guest.checked:
        return Move(True, "unchecked", message="no checked CPU model: libvirt does not check")
    return None


def move_from_verdict(verdict: Verdict) -> Move:
    if verdict.compatible:
        return Move(True, "yes")
    return Move(False, "no", verdict.missing, verdict.vendor, verdict.problem())


# --------------------------------------------------------------- the libvirt side
class Hypervisor(Protocol):
    """What the engine reads from one host (LibvirtHost is the real one)."""

    uri: str

    def open(self) -> None: ...
    def version(self) -> str: ...
    def domain_capabilities(self) -> str: ...
    def expand(self, cpu_xml: str, arch: str, virttype: str) -> str: ...
    def baseline(self, cpu_xmls: Sequence[str], arch: str, virttype: str) -> str: ...
    def compare(self, cpu_xml: str, arch: str | None, virttype: str) -> Verdict: ...
    def model_features(self, model: str, arch: str) -> list[str]: ...
    def guests(self, names: Sequence[str]) -> list[tuple[str, bool]]: ...
    def close(self) -> None: ...


def _quiet_libvirt() -> None:
    """libvirt prints every error to stderr unless a handler is set: virtdeb reports them."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtHost:
    """One host through libvirt-python; libvirt errors by get_error_code()."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.conn: Any = None
        self._version = ""

    def _error(self, exc: Any, what: str) -> LibvirtError:
        return LibvirtError(f"{self.uri}: {what}: {exc.get_error_message()}")

    def open(self) -> None:
        import libvirt

        _quiet_libvirt()
        try:
            self.conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise self._error(exc, "cannot connect") from exc

    def version(self) -> str:
        if not self._version:
            import libvirt

            try:
                v = int(self.conn.getLibVersion())
            except libvirt.libvirtError as exc:
                raise self._error(exc, "getLibVersion") from exc
            self._version = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
        return self._version

    def domain_capabilities(self) -> str:
        import libvirt

        try:
            return str(self.conn.getDomainCapabilities(None, None, None, None, 0))
        except libvirt.libvirtError as exc:
            raise self._error(exc, "getDomainCapabilities") from exc

    def expand(self, cpu_xml: str, arch: str, virttype: str) -> str:
        import libvirt

        try:
            return str(self.conn.baselineHypervisorCPU(None, arch, None, virttype, [cpu_xml],
                                                       BASELINE_EXPAND))
        except libvirt.libvirtError as exc:
            raise self._error(exc, "expanding a CPU") from exc

    def baseline(self, cpu_xmls: Sequence[str], arch: str, virttype: str) -> str:
        import libvirt

        try:
            return str(self.conn.baselineHypervisorCPU(None, arch, None, virttype,
                                                       list(cpu_xmls), BASELINE_MIGRATABLE))
        except libvirt.libvirtError as exc:
            raise self._error(exc, "baselineHypervisorCPU") from exc

    def compare(self, cpu_xml: str, arch: str | None, virttype: str) -> Verdict:
        import libvirt

        try:
            result = self.conn.compareHypervisorCPU(None, arch, None, virttype, cpu_xml,
                                                    COMPARE_FAIL_INCOMPATIBLE)
        except libvirt.libvirtError as exc:
            message = exc.get_error_message() or ""
            if exc.get_error_code() == ERR_CPU_INCOMPATIBLE:
                missing, vendor = parse_incompatible(message)
                return Verdict(False, tuple(missing), vendor, message)
            if exc.get_error_code() in (*ERR_UNSUPPORTED, *ERR_CONNECTION):
                raise self._error(exc, "compareHypervisorCPU") from exc
            # e.g. a model or feature this (older) libvirt does not know
            return Verdict(False, (), None, f"{message} (libvirt {self.version()} there)")
        return Verdict(result > 0, (), None, "" if result > 0 else "incompatible")

    def model_features(self, model: str, arch: str) -> list[str]:
        """Every feature of a named model, from libvirt's CPU map (not limited to the host:
        baselineHypervisorCPU would drop what this host lacks)."""
        import libvirt

        cpu = ET.Element("cpu")
        ET.SubElement(cpu, "arch").text = arch
        ET.SubElement(cpu, "model").text = model
        try:
            return required_features(str(self.conn.baselineCPU(
                [ET.tostring(cpu, encoding="unicode")], BASELINE_EXPAND)))
        except libvirt.libvirtError as exc:
            raise self._error(exc, f"expanding CPU model {model}") from exc

    def guests(self, names: Sequence[str]) -> list[tuple[str, bool]]:
        """(XML a migration carries, active) of every defined domain, or of ``names``."""
        import libvirt

        try:
            domains = self.conn.listAllDomains(LIST_PERSISTENT)
        except libvirt.libvirtError as exc:
            raise self._error(exc, "listing domains") from exc
        out = []
        for dom in sorted(domains, key=lambda d: str(d.name())):
            if names and dom.name() not in names:
                continue
            try:
                active = bool(dom.isActive())
                out.append((str(dom.XMLDesc(0 if active else XML_INACTIVE)), active))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != ERR_NO_DOMAIN:  # undefined meanwhile: skip
                    raise self._error(exc, f"domain {dom.name()}") from exc
        return out

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001, S110 - closing a dead connection
                pass
            self.conn = None


# ----------------------------------------------------------------- in parallel
T = TypeVar("T")


@dataclass
class Outcome(Generic[T]):
    value: T | None = None
    error: str | None = None  # a VirtdebError's message, or "no answer within S s"
    done: bool = False


def parallel(jobs: Mapping[str, Callable[[], T]], deadline: float,
             timeout: float) -> dict[str, Outcome[T]]:
    """Run every job in its own thread (libvirt releases the GIL); wait until ``deadline``.

    A job still running then is abandoned (a daemon thread: it cannot keep the
    process alive) and reported as not answering.  Anything but a VirtdebError
    raised in a job is a bug and is raised here.
    """
    outcomes: dict[str, Outcome[T]] = {key: Outcome() for key in jobs}
    bugs: list[BaseException] = []

    def run(key: str, job: Callable[[], T]) -> None:
        out = outcomes[key]
        try:
            out.value = job()
        except VirtdebError as exc:
            out.error = exc.message
        except Exception as exc:  # noqa: BLE001 - carried to the main thread
            bugs.append(exc)
            out.error = f"internal error: {exc!r}"
        out.done = True

    threads = [threading.Thread(target=run, args=(key, job), daemon=True,
                                name=f"cpu-baseline {key}") for key, job in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if bugs:
        raise bugs[0]
    for out in outcomes.values():
        if not out.done and out.error is None:
            out.error = f"no answer within {timeout:g} s"
    return outcomes


# --------------------------------------------------------------------- the survey
@dataclass
class HostResult:
    uri: str
    label: str
    hv: Hypervisor
    error: str | None = None
    version: str = ""
    caps: Caps | None = None
    features: list[str] = field(default_factory=list)  # host-model, expanded
    guests: list[Guest] = field(default_factory=list)
    accepts: Verdict | None = None  # of the fleet baseline
    lacks: Verdict | None = None  # the better named model, where it is not usable

    @property
    def ok(self) -> bool:
        return self.error is None and self.caps is not None


@dataclass
class Fleet:
    hosts: list[HostResult]
    baseline_xml: str | None = None
    baseline_features: list[str] = field(default_factory=list)
    baseline_error: str | None = None
    baseline_note: str = ""
    common_model: str | None = None
    better_model: str | None = None
    moves: dict[str, dict[str, Move]] = field(default_factory=dict)  # guest key -> uri ->
    time: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        ok = [h for h in self.hosts if h.ok]
        common = None
        if self.common_model:
            common = {"model": self.common_model,
                      "cpu_xml": pretty_cpu(model_xml(self.common_model))}
        better = None
        if self.better_model:
            better = {"model": self.better_model,
                      "usable_on": [h.uri for h in ok if h.caps and
                                    self.better_model in h.caps.usable()],
                      "lacks": {h.uri: list(h.lacks.missing) if h.lacks.missing
                                else [h.lacks.problem()]
                                for h in ok if h.lacks is not None}}
        guests = [g for h in self.hosts for g in h.guests]
        return {
            "time": self.time,
            "seconds": round(self.seconds, 3),
            "hosts": [self._host_json(h) for h in self.hosts],
            "baseline": {
                "cpu_xml": None if self.baseline_xml is None else pretty_cpu(self.baseline_xml),
                "model": None if self.baseline_xml is None
                else model_of(parse_xml(self.baseline_xml)),
                "vendor": None if self.baseline_xml is None
                else (parse_xml(self.baseline_xml).findtext("vendor") or None),
                "features": self.baseline_features,
                "error": self.baseline_error,
                "note": self.baseline_note,
                "accepted_by": [h.uri for h in ok if h.accepts and h.accepts.compatible],
                "refused_by": {h.uri: h.accepts.problem() for h in ok
                               if h.accepts is not None and not h.accepts.compatible},
            },
            "named_model": {"common": common, "better": better},
            "domains": [{"name": g.name, "host": g.home, "active": g.active,
                         "cpu_mode": g.mode, "model": g.model or None, "cpu_xml": g.cpu_xml,
                         "moves": {uri: m.as_json()
                                   for uri, m in self.moves.get(g.key, {}).items()}}
                        for g in guests],
        }

    @staticmethod
    def _host_json(h: HostResult) -> dict[str, Any]:
        out: dict[str, Any] = {"uri": h.uri, "label": h.label, "ok": h.ok, "error": h.error}
        if h.caps is not None:
            out.update({
                "libvirt": h.version, "arch": h.caps.arch, "virttype": h.caps.virttype,
                "host_model": {"model": h.caps.model, "vendor": h.caps.vendor,
                               "features": [n for n, p in h.caps.features if p != "disable"],
                               "disabled": [n for n, p in h.caps.features if p == "disable"]},
                "features": h.features,
                "usable_models": sorted(h.caps.usable()),
                # what keeps each other model from this host (None: libvirt < 9.x says not)
                "unusable_models": {m.name: None if m.blockers is None else list(m.blockers)
                                    for m in h.caps.models if not m.usable},
                "accepts_baseline": None if h.accepts is None else h.accepts.compatible,
            })
        return out


def labels(uris: Sequence[str]) -> list[str]:
    """Short column names: A, B, ..., Z, AA, ..."""
    out = []
    for i in range(len(uris)):
        name = ""
        n = i
        while True:
            name = chr(ord("A") + n % 26) + name
            n = n // 26 - 1
            if n < 0:
                break
        out.append(name)
    return out


def newest(models: Sequence[str], rank: Mapping[str, int]) -> str | None:
    """The model with the most features (ties: the later name), None if none ranked."""
    ranked = [m for m in models if rank.get(m, -1) >= 0]
    return max(ranked, key=lambda m: (rank[m], m)) if ranked else None


def pick_models(caps: Sequence[Caps], rank: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(newest model usable on every host, newest better one usable on some of them)."""
    if not caps:
        return None, None
    common = set.intersection(*(c.usable() for c in caps))
    some = set.union(*(c.usable() for c in caps)) - common
    best = newest(sorted(common), rank)
    floor = rank.get(best, -1) if best else -1
    better = newest(sorted(m for m in some if rank.get(m, -1) > floor), rank)
    return best, better


def survey(uris: Sequence[str], names: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT,
           opener: Callable[[str], Hypervisor] = LibvirtHost) -> Fleet:
    """Ask every host, in parallel; see the module docstring."""
    start = time.monotonic()
    uris = list(dict.fromkeys(uris or [DEFAULT_URI]))
    hosts = [HostResult(uri, label, opener(uri)) for uri, label in zip(uris, labels(uris),
                                                                       strict=True)]
    by_uri = {h.uri: h for h in hosts}
    wanted = set(names)

    def read(h: HostResult) -> Callable[[], None]:
        def job() -> None:
            h.hv.open()
            h.version = h.hv.version()
            try:
                caps = parse_domcaps(h.hv.domain_capabilities())
            except (ValueError, ET.ParseError) as exc:
                raise LibvirtError(f"{h.uri}: domain capabilities: {exc}") from exc
            h.features = required_features(h.hv.expand(host_model_xml(caps), caps.arch,
                                                       caps.virttype))
            h.guests = [parse_guest(h.uri, xml, active) for xml, active in h.hv.guests(names)]
            h.caps = caps
        return job

    for uri, out in parallel({h.uri: read(h) for h in hosts}, start + timeout,
                             timeout).items():
        if out.error is not None:
            by_uri[uri].error = out.error
    fleet = Fleet(hosts)
    ok = [h for h in hosts if h.ok]
    if wanted:
        found = {g.name for h in ok for g in h.guests}
        for name in sorted(wanted - found):
            log.warning("no host that answered has a domain named %s", name)
    if ok:
        fleet_baseline(fleet, ok, timeout)
    _compare_all(fleet, ok, timeout)
    fleet.seconds = time.monotonic() - start
    fleet.time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return fleet


def _version(h: HostResult) -> tuple[int, ...]:
    return tuple(int(p) for p in h.version.split(".") if p.isdigit()) or (0,)


def fleet_baseline(fleet: Fleet, ok: Sequence[HostResult], timeout: float) -> None:
    """The migratable baseline and the ranking of named models.

    Asked of the host with the newest libvirt (it knows the most CPU models; in a
    fleet in the middle of an upgrade an older one may not know a newer host's
    host-model).  With several libvirt versions, a baseline that some host refuses
    is asked again of the next older version, and the first that every host
    accepts is kept (else the newest's).
    """
    askers: list[HostResult] = []
    for h in sorted(ok, key=_version, reverse=True):
        if all(_version(a) != _version(h) for a in askers):
            askers.append(h)
    caps = [h.caps for h in ok if h.caps is not None]
    vendors = sorted({c.vendor for c in caps})
    mixed = len(vendors) > 1
    if mixed:
        fleet.baseline_note = ("hosts of different CPU vendors (" + ", ".join(
            f"{v or 'unknown'}: " + " ".join(h.label for h in ok if h.caps and h.caps.vendor == v)
            for v in vendors) + "): the baseline names no vendor")
    inputs = [host_model_xml(c, vendor=not mixed) for c in caps]
    chosen: tuple[HostResult, str] | None = None
    errors = []
    for asker in askers:
        assert asker.caps is not None
        try:
            xml = asker.hv.baseline(inputs, asker.caps.arch, asker.caps.virttype)
        except VirtdebError as exc:
            errors.append(exc.message)
            continue
        chosen = chosen or (asker, xml)
        if len(askers) == 1 or _accepted_by_all(xml, ok, timeout):
            chosen = (asker, xml)
            break
    if chosen is None:
        fleet.baseline_error = "; ".join(errors)
    else:
        asker, xml = chosen
        assert asker.caps is not None
        fleet.baseline_xml = xml
        try:
            fleet.baseline_features = required_features(
                asker.hv.expand(xml, asker.caps.arch, asker.caps.virttype))
        except VirtdebError as exc:
            fleet.baseline_error = exc.message
    rank: dict[str, int] = {}
    for name in sorted(set.union(*(c.usable() for c in caps))):
        rank[name] = -1  # a model no asked libvirt knows
        for asker in askers:
            assert asker.caps is not None
            try:
                rank[name] = len(asker.hv.model_features(name, asker.caps.arch))
                break
            except VirtdebError:
                continue
    fleet.common_model, fleet.better_model = pick_models(caps, rank)


def _accepted_by_all(cpu_xml: str, ok: Sequence[HostResult], timeout: float) -> bool:
    def job(h: HostResult) -> Callable[[], bool]:
        def accepts() -> bool:
            assert h.caps is not None
            return h.hv.compare(cpu_xml, h.caps.arch, h.caps.virttype).compatible
        return accepts
    results = parallel({h.uri: job(h) for h in ok}, time.monotonic() + timeout, timeout)
    return all(out.value is True for out in results.values())


def _compare_all(fleet: Fleet, ok: Sequence[HostResult], timeout: float) -> None:
    guests = [g for h in fleet.hosts for g in h.guests]
    for g in guests:
        fleet.moves[g.key] = {}

    def compare_on(h: HostResult) -> Callable[[], dict[str, Move]]:
        def job() -> dict[str, Move]:
            assert h.caps is not None
            if fleet.baseline_xml is not None:
                h.accepts = h.hv.compare(fleet.baseline_xml, h.caps.arch, h.caps.virttype)
            better = fleet.better_model
            if better and better not in h.caps.usable():
                model = h.caps.get(better)
                h.lacks = (Verdict(False, model.blockers) if model is not None
                           and model.blockers else
                           h.hv.compare(model_xml(better), h.caps.arch, h.caps.virttype))
            seen: dict[tuple[str, str | None, str], Verdict] = {}
            out = {}
            for g in guests:
                move = move_without_compare(g, h.uri)
                if move is None:
                    assert g.cpu_xml is not None
                    key = (normalise(parse_xml(g.cpu_xml)), g.arch, g.virttype)
                    if key not in seen:
                        seen[key] = h.hv.compare(g.cpu_xml, g.arch, g.virttype)
                    move = move_from_verdict(seen[key])
                out[g.key] = move
            return out
        return job

    results = parallel({h.uri: compare_on(h) for h in ok}, time.monotonic() + timeout,
                       timeout)
    for h in fleet.hosts:
        out = results.get(h.uri)
        for g in guests:
            if out is not None and out.value is not None:
                fleet.moves[g.key][h.uri] = out.value[g.key]
            elif g.home == h.uri:
                fleet.moves[g.key][h.uri] = Move(True, "home")
            else:
                why = h.error or (out.error if out is not None else None) or "no answer"
                fleet.moves[g.key][h.uri] = Move(None, "no-answer", message=why)
        if out is not None and out.error is not None and h.error is None:
            h.error = out.error


def close(fleet: Fleet) -> None:
    """Close the connections of the hosts that answered (an abandoned one may hang)."""
    for h in fleet.hosts:
        if h.error is None:
            h.hv.close()


# ------------------------------------------------------------------ pure: drift
@dataclass(frozen=True)
class Drift:
    text: str
    loss: bool  # something that worked no longer does


def drift(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[Drift]:
    """What changed between two :meth:`Fleet.as_json` results (saved first)."""
    out: list[Drift] = []
    old_hosts = {h["uri"]: h for h in saved.get("hosts", [])}
    new_hosts = {h["uri"]: h for h in now.get("hosts", [])}
    old_moves = _moves(saved)
    new_moves = _moves(now)
    for uri, new in new_hosts.items():
        old = old_hosts.get(uri)
        name = f"host {new.get('label')} ({uri})"
        if old is None:
            out.append(Drift(f"{name} is new since the saved baseline", False))
            continue
        if not new.get("ok") or not old.get("ok"):
            if old.get("ok") and not new.get("ok"):
                out.append(Drift(f"{name} answered then, not now ({new.get('error')})", True))
            continue
        lost = sorted(set(old.get("features", [])) - set(new.get("features", [])))
        gained = sorted(set(new.get("features", [])) - set(old.get("features", [])))
        moved = sorted(guest for guest, targets in old_moves.items()
                       if targets.get(uri) is True and new_moves.get(guest, {}).get(uri) is False)
        old_vendor = old.get("host_model", {}).get("vendor")
        new_vendor = new.get("host_model", {}).get("vendor")
        what = []
        if old_vendor != new_vendor:
            what.append(f"changed CPU vendor from {old_vendor or 'unknown'} to"
                        f" {new_vendor or 'unknown'}")
        if lost:
            what.append("lost " + ", ".join(lost))
        if what or moved:
            text = f"{name} " + ("; ".join(what) if what else "changed")
            if moved:
                text += (f": guests {', '.join(guest for guest, _home in moved)} can no longer"
                         f" move to {new.get('label')}")
            else:
                text += ": no guest is affected"
            out.append(Drift(text, True))
        if gained:
            out.append(Drift(f"{name} gained " + ", ".join(gained), False))
        old_usable = set(old.get("usable_models", []))
        gone = sorted(old_usable - set(new.get("usable_models", [])))
        if gone:
            out.append(Drift(f"{name} can no longer run the named models"
                             f" {', '.join(gone)}", True))
    answered = {h["uri"]: h["label"] for h in now.get("hosts", []) if h.get("ok")}
    for name, home in sorted(set(old_moves) - set(new_moves)):
        if home in answered:
            out.append(Drift(f"guest {name} of host {answered[home]} ({home}) is no longer"
                             " defined", False))
    for uri, old in old_hosts.items():
        if uri not in new_hosts:
            out.append(Drift(f"host {uri} (then {old.get('label')}) was not asked this time",
                             False))
    old_base = saved.get("baseline", {})
    new_base = now.get("baseline", {})
    shrunk = sorted(set(old_base.get("features") or []) - set(new_base.get("features") or []))
    if old_base.get("cpu_xml") and new_base.get("cpu_xml") and shrunk:
        models = (f" ({old_base.get('model')} -> {new_base.get('model')})"
                  if old_base.get("model") != new_base.get("model") else "")
        out.append(Drift("the fleet baseline lost " + ", ".join(shrunk) + models
                         + ": guests defined with the saved one cannot move to every host",
                         True))
    return out


def _moves(result: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, bool | None]]:
    """(guest, its host) -> target host -> can it move there."""
    return {(d["name"], d["host"]): {uri: m.get("can") for uri, m in d["moves"].items()}
            for d in result.get("domains", [])}


# -------------------------------------------------------------- pure: the text
def render(result: Mapping[str, Any], changes: Sequence[Drift] = (),
           saved_time: str | None = None) -> str:
    """The report for a person: one screen for a small fleet."""
    lines: list[str] = []
    hosts = result["hosts"]
    label = {h["uri"]: h["label"] for h in hosts}
    width = max(len(h["uri"]) for h in hosts)
    answered = [h for h in hosts if h["ok"]]
    lines.append(f"hosts: {len(answered)} of {len(hosts)} answered"
                 f" ({result['seconds']:.2f} s)")
    for h in hosts:
        if h["ok"]:
            hm = h["host_model"]
            lines.append(f"  {h['label']}  {h['uri']:<{width}}  libvirt {h['libvirt']},"
                         f" host-model {hm['model']} ({hm['vendor'] or 'no vendor'})"
                         f" {len(h['features'])} features")
        else:
            error = str(h["error"]).removeprefix(f"{h['uri']}: ")
            lines.append(f"  {h['label']}  {h['uri']:<{width}}  NO ANSWER: {error}")
    base = result["baseline"]
    if base["cpu_xml"]:
        refused = base["refused_by"]
        accepted = " ".join(label[u] for u in base["accepted_by"]) or "none"
        lines.append(f"fleet baseline (migratable): {base['model']}"
                     f" ({base['vendor'] or 'no vendor'}) {len(base['features'])} features;"
                     f" accepted by {accepted}"
                     + "".join(f"; REFUSED by {label[u]}: {why}" for u, why in refused.items()))
        if base["note"]:
            lines.append(f"  {base['note']}")
    elif answered:
        lines.append(f"fleet baseline: NONE: {base['error']}")
    named = result["named_model"]
    if named["common"]:
        text = (f"newest named model usable on every host that answered:"
                f" {named['common']['model']}")
    elif answered:
        text = "no named model is usable on every host that answered"
    else:
        text = ""
    if named["better"]:
        better = named["better"]
        lacks = "; ".join(f"{label[u]} lacks {', '.join(f)}" for u, f in better["lacks"].items())
        text += (f"; {better['model']} is usable on"
                 f" {' '.join(label[u] for u in better['usable_on'])} only ({lacks})")
    if text:
        lines.append(text)
    lines += _matrix(result, label)
    if saved_time is not None:
        if changes:
            lines.append(f"since the saved baseline of {saved_time}:")
            lines += [f"  {c.text}" for c in changes]
        else:
            lines.append(f"no change since the saved baseline of {saved_time}")
    return "\n".join(lines) + "\n"


SHORT = {"home": "home", "yes": "yes", "no": "NO", "adapts": "adapts", "unchecked": "yes*",
         "passthrough": "?pass", "no-answer": "?"}


def _matrix(result: Mapping[str, Any], label: Mapping[str, str]) -> list[str]:
    domains = result["domains"]
    if not domains:
        return ["no domains defined on the hosts that answered"]
    uris = [h["uri"] for h in result["hosts"]]
    rows = [d for d in domains
            if len(domains) <= MATRIX_ROWS or any(m["can"] is not True
                                                  for m in d["moves"].values())]
    names = [f"{d['name']}@{label[d['host']]}" for d in rows]
    width = max([len(n) for n in names] + [5])
    lines = ["migration matrix (can the guest move to the host of the column):",
             (f"  {'guest':<{width}}  " + " ".join(f"{label[u]:<6}" for u in uris)).rstrip()]
    for name, d in zip(names, rows, strict=True):
        cells = [SHORT.get(d["moves"].get(u, {}).get("state", "?"), "?") for u in uris]
        lines.append(f"  {name:<{width}}  " + " ".join(f"{c:<6}" for c in cells).rstrip())
    if len(rows) < len(domains):
        lines.append(f"  ({len(domains) - len(rows)} more guests can move to every host)")
    cannot = [(d, u, m) for d in domains for u, m in d["moves"].items() if m["can"] is False]
    if cannot:
        lines.append("cannot move:")
        for d, u, m in cannot:
            why = (f"missing {', '.join(m['missing'])}" if m["missing"] else m["message"])
            if m["vendor_mismatch"] and m["missing"]:
                why = "CPU vendor differs; " + why
            lines.append(f"  {d['name']}@{label[d['host']]} -> {label[u]}: {why}")
    legend = {SHORT[s]: s for d in rows for m in d["moves"].values()
              for s in [m["state"]] if s in ("unchecked", "passthrough", "no-answer")}
    if legend:
        lines.append("  (" + "; ".join(f"{k}: {_LEGEND[v]}" for k, v in legend.items()) + ")")
    return lines


_LEGEND = {"unchecked": "no CPU model that libvirt checks",
           "passthrough": "host-passthrough, only between identical hosts",
           "no-answer": "the host did not answer"}


# ------------------------------------------------------------- saved baselines
def load_saved(host: Host) -> dict[str, Any] | None:
    return microcode.read_json(host, FLEET_STATE)


def save(host: Host, result: Mapping[str, Any]) -> str | None:
    """Record the fleet's result through the journal (``virtdeb revert`` undoes it), as
    every file virtdeb writes; the id of the journal entry (None: nothing changed).

    The models' blockers are left out: only what :func:`drift` compares is kept.
    """
    from virtdeb.effects.file import FileChange
    from virtdeb.journal import Journal

    hosts = [{k: v for k, v in h.items() if k != "unusable_models"} for h in result["hosts"]]
    data = (json.dumps({**result, "hosts": hosts}, indent=1, sort_keys=True) + "\n").encode()
    with Journal(host).locked("virtdeb cpu-baseline --save"):  # read under the lock
        before = fsio.read_bytes(host.path(FLEET_STATE), FLEET_STATE)
        if before == data:
            return None
        entry = Journal(host).apply([FileChange("cpu", FLEET_STATE, before, data)],
                                    "cpu-baseline --save")
    return None if entry is None else entry.id


def check_local(host: Host) -> dict[str, Any] | None:
    """Does this host still give the saved fleet baseline and the saved guests' CPUs?

    For the microcode trigger, the boot check and rule ``cpu``: None when no fleet
    baseline was saved here.  ``problems`` has a sentence for each thing this host
    no longer accepts (the callers log or report them; this never prints).
    """
    saved = load_saved(host)
    if saved is None or not (saved.get("baseline") or {}).get("cpu_xml"):
        return None
    hv = LibvirtHost(host.uri)
    hv.conn = host.connect()  # the Host's connection: not closed here
    answered = [h for h in saved.get("hosts", []) if h.get("ok")]
    arch = answered[0].get("arch") if answered else None
    virttype = answered[0].get("virttype", "kvm") if answered else "kvm"
    when = saved.get("time")
    verdict = hv.compare(saved["baseline"]["cpu_xml"], arch, virttype)
    problems = []
    if not verdict.compatible:
        problems.append(f"this host no longer gives the fleet's CPU baseline saved {when}"
                        f" ({verdict.problem()}): guests defined with it cannot move here;"
                        " run virtdeb cpu-baseline over the fleet")
    refused = {}
    for d in saved.get("domains", []):
        if not d.get("cpu_xml") or not any(m.get("can") for m in d.get("moves", {}).values()):
            continue
        v = hv.compare(d["cpu_xml"], arch, virttype)
        if not v.compatible:
            refused[f"{d['name']}@{d['host']}"] = v.problem()
    if refused:
        problems.append(f"guests of the fleet baseline saved {when} that can no longer run"
                        " here: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    return {"saved": when, "baseline_accepted": verdict.compatible,
            "baseline_problem": "" if verdict.compatible else verdict.problem(),
            "guests_refused": refused, "problems": problems}
