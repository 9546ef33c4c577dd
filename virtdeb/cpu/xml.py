"""A domain's CPU XML: parse it, judge it, rewrite its ``<cpu>`` element."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

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


def quote(value: str) -> str:
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("'", "&apos;"))


def format_element(el: ET.Element, indent: str, step: str = "  ") -> str:
    """``el`` formatted the way libvirt formats XML (single quotes, two-space steps)."""
    attrs = "".join(f" {k}='{quote(v)}'" for k, v in el.attrib.items())
    text = (el.text or "").strip()
    if not len(el) and not text:
        return f"{indent}<{el.tag}{attrs}/>\n"
    if not len(el):
        return f"{indent}<{el.tag}{attrs}>{quote(text)}</{el.tag}>\n"
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
