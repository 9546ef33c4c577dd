"""libvirt through libvirt-python: the one place that imports it and turns its errors
into virtdeb's (by error code, never by message text)."""

from __future__ import annotations

from typing import Any

from virtdeb.errors import LibvirtError
from virtdeb.host import Host


def module() -> Any:
    import libvirt

    return libvirt


class NetworkHandle:
    """A libvirt network whose every call raises LibvirtError instead of libvirtError."""

    def __init__(self, net: Any) -> None:
        self._net = net

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._net, attr)

        def call(*args: Any) -> Any:
            return network_call(f"{self._net.name()} ({attr})", method, *args)
        return call


def lookup_network(host: Host, name: str) -> Any:
    """The libvirt network ``name``, or None when it is not defined."""
    libvirt = module()
    conn = host.connect()
    try:
        return NetworkHandle(conn.networkLookupByName(name))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise LibvirtError(f"libvirt network {name}: {exc.get_error_message()}") from exc


def network_call(what: str, func: Any, *args: Any) -> Any:
    libvirt = module()
    try:
        return func(*args)
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"libvirt network {what}: {exc.get_error_message()}") from exc
