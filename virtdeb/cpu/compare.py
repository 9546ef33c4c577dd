"""Comparing domains' CPUs with what the hypervisor can give (compareHypervisorCPU)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from virtdeb.cpu import (
    BASELINE_EXPAND,
    COMPARE_FAIL_INCOMPATIBLE,
    ERR_CPU_INCOMPATIBLE,
    ERR_UNSUPPORTED,
    XML_INACTIVE_SECURE,
)
from virtdeb.cpu.xml import DomainCPU, fragility, parse_domain, parse_incompatible, parse_xml, quote
from virtdeb.errors import LibvirtError, UsageError
from virtdeb.system import libvirt as lv


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
        libvirt = lv.module()
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
            caps = lv.call("getDomainCapabilities", self.conn.getDomainCapabilities, *key, 0)
            root = parse_xml(caps)
            self._models[key] = [
                ((m.text or "").strip(), m.get("vendor", "unknown"), m.get("usable") == "yes")
                for m in root.findall("cpu/mode[@name='custom']/model")]
        return self._models[key]

    def features(self, model: str, arch: str | None) -> frozenset[str]:
        """Every feature a named model has (libvirt's CPU map, expanded)."""
        key = (model, arch or "x86_64")
        if key not in self._features:
            libvirt = lv.module()
            xml = f"<cpu><arch>{quote(key[1])}</arch><model>{quote(model)}</model></cpu>"
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
    comparer = comparer or Comparer(conn)
    domains = lv.domains(conn, lv.LIST_PERSISTENT)
    if names:
        known = {d.name() for d in domains}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(f"no defined domain named {unknown[0]!r}"
                             f" ({len(known)} domains are defined)")
        domains = [d for d in domains if d.name() in set(names)]
    reports = []
    for i, (_dom, state) in enumerate(lv.domain_states(conn, domains, XML_INACTIVE_SECURE), 1):
        if state is None:
            continue  # undefined meanwhile
        parsed, active = parse_domain(state[0]), state[1]
        verdict = comparer.compare(parsed) if parsed.custom else None
        reports.append(DomainReport(parsed, active, verdict, fragility(parsed.cpu)))
        if progress:
            progress(i, len(domains))
    return reports, comparer
