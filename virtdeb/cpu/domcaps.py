"""A fleet host's CPU as data, pure: its domain capabilities (host-model, named models),
its guests' CPU definitions, and a guest's move to another host (cpu-baseline)."""


from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from virtdeb.cpu.compare import Verdict
from virtdeb.cpu.xml import (
    format_element,
    is_custom,
    model_of,
    parse_xml,
)


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
