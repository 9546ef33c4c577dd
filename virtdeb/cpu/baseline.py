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
Everything that talks to libvirt is in :mod:`.fleet_host` (``LibvirtHost``); the pure
parts are :mod:`.domcaps` (parsing) and :mod:`.drift` (drift, the text, the saved result).
"""


from __future__ import annotations

import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from virtdeb.cpu.compare import Verdict
from virtdeb.cpu.domcaps import (
    Caps,
    Guest,
    Move,
    host_model_xml,
    model_xml,
    move_from_verdict,
    move_without_compare,
    parse_domcaps,
    parse_guest,
    pretty_cpu,
    required_features,
)
from virtdeb.cpu.fleet_host import Hypervisor, LibvirtHost
from virtdeb.cpu.xml import (
    model_of,
    normalise,
    parse_xml,
)
from virtdeb.errors import LibvirtError, VirtdebError
from virtdeb.host import DEFAULT_URI

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 20.0


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
