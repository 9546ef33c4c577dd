"""Rewriting a domain's CPU so that it fits the host: the three strategies."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from typing import Any

from virtdeb.cpu import STRATEGIES, XML_INACTIVE_SECURE
from virtdeb.cpu.compare import Comparer, DomainReport, Verdict
from virtdeb.cpu.xml import DomainCPU, parse_domain, replace_cpu
from virtdeb.effects.domain import DomainXMLChange, lookup_domain
from virtdeb.errors import UsageError, VirtdebError


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


def verify(conn: Any, changes: Iterable[DomainXMLChange]) -> list[tuple[str, Verdict]]:
    """Compare again what was redefined, as libvirt now stores it (no cache)."""
    comparer = Comparer(conn)
    out = []
    for change in changes:
        defined = lookup_domain(conn, change.uuid, change.name)
        dom = parse_domain(defined.XMLDesc(XML_INACTIVE_SECURE))
        if dom.cpu is None:
            out.append((dom.name, Verdict(True)))
        else:
            out.append((dom.name, comparer.compare(dom)))
    return out


def plan_fixes(reports: Sequence[DomainReport], strategy: str, comparer: Comparer,
               uri: str) -> list[DomainXMLChange]:
    """The rewrites of every broken domain (applied by the caller, through the journal)."""
    return [plan_fix(r, strategy, comparer, uri) for r in reports if r.broken]
