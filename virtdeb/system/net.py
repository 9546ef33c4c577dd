"""The host's IPv4 addresses and routes, and interface names.

Read with ``ip -j -4 addr`` and ``ip -j -4 route show table all`` through
:meth:`Host.run` (with ``ip -n NS`` when the Host names a network namespace),
so that a test can point virtdeb at a private namespace.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from virtdeb.errors import SystemCommandError
from virtdeb.host import Host

log = logging.getLogger(__name__)

IFNAMSIZ = 16  # the kernel's limit, with the terminating NUL


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a network interface (bridge) name, or None if it can.

    The kernel's rules (dev_valid_name): 1 to 15 bytes, not ``.`` or ``..``,
    no ``/``, ``:`` or whitespace; virtdeb also refuses non-printable
    characters and ``#`` (it starts a comment in /etc/qemu/bridge.conf).
    """
    if not name:
        return "an empty name"
    if len(name.encode("utf-8")) >= IFNAMSIZ:
        return f"longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "'.' and '..' are not interface names"
    for char in name:
        if char.isspace():
            return "contains whitespace"
        if not char.isprintable():
            return f"contains the non-printable character {char!r}"
        if char in "/:#":
            return f"contains {char!r}"
    return None


def _ip_json(host: Host, args: list[str]) -> list[dict[str, Any]]:
    argv = ["ip"]
    if host.netns:
        argv += ["-n", host.netns]
    argv += ["-j", "-4", *args]
    proc = host.run(argv)
    import json  # here: importing this module (for doctor) does not pay for it

    try:
        data = json.loads(proc.stdout or "[]")
    except ValueError as exc:
        raise SystemCommandError(f"{' '.join(argv)}: unreadable JSON output ({exc})") from exc
    if not isinstance(data, list):
        raise SystemCommandError(f"{' '.join(argv)}: unexpected JSON output")
    return [item for item in data if isinstance(item, dict)]


def addresses_on(host: Host) -> list[tuple[ipaddress.IPv4Interface, str]]:
    """Every IPv4 address of the host, with its prefix length, and its device."""
    out = []
    for link in _ip_json(host, ["addr", "show"]):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and "local" in info:
                out.append((ipaddress.IPv4Interface(f"{info['local']}/{info.get('prefixlen', 32)}"),
                            str(link.get("ifname", "?"))))
    return out


def routes_on(host: Host) -> list[tuple[ipaddress.IPv4Network, str]]:
    """The destination of every IPv4 route, in every table (``default`` is 0.0.0.0/0),
    and its device ("" when it has none, e.g. a blackhole)."""
    out = []
    for route in _ip_json(host, ["route", "show", "table", "all"]):
        dst = route.get("dst")
        if not isinstance(dst, str):
            continue
        try:
            out.append((ipaddress.IPv4Network("0.0.0.0/0" if dst == "default" else dst,
                                              strict=False), str(route.get("dev", ""))))
        except ValueError:
            log.debug("ignoring route destination %r", dst)
    return out


def addresses(host: Host) -> list[ipaddress.IPv4Interface]:
    """Every IPv4 address of the host, with its prefix length."""
    return [iface for iface, _ in addresses_on(host)]


def routes(host: Host) -> list[ipaddress.IPv4Network]:
    """The destination of every IPv4 route, in every table (``default`` is 0.0.0.0/0)."""
    return [net for net, _ in routes_on(host)]


def used_networks(host: Host, extra: Iterable[ipaddress.IPv4Network] = ()) -> \
        list[ipaddress.IPv4Network]:
    """The networks of every address and route of the host, plus ``extra``."""
    used = [iface.network for iface in addresses(host)]
    used += routes(host)
    used += list(extra)
    return used
