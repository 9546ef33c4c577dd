"""One fleet host through libvirt-python, for cpu-baseline: every read the fleet engine
makes of a host (libvirt errors compared by get_error_code())."""


from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any, Protocol

from virtdeb.cpu import ERR_UNSUPPORTED
from virtdeb.cpu.compare import Verdict
from virtdeb.cpu.domcaps import required_features
from virtdeb.cpu.xml import (
    parse_incompatible,
)
from virtdeb.errors import LibvirtError
from virtdeb.system import libvirt as lv

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
        return lv.error(exc, f"{self.uri}: {what}")

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
