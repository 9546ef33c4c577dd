"""libvirt through libvirt-python: the one place that imports it for reads and the one
wrapper that turns its errors into virtdeb's (compared by error code, never by text).

Reads live here (networks, domains and their XML); calls that change libvirt are
made by the effects (effects/network.py, effects/domain.py) through :func:`call`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from virtdeb.errors import LibvirtError
from virtdeb.host import Host

ERR_NO_DOMAIN = 42  # VIR_ERR_NO_DOMAIN
ERR_NO_NETWORK = 43  # VIR_ERR_NO_NETWORK
LIST_ACTIVE = 1  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
LIST_PERSISTENT = 4  # VIR_CONNECT_LIST_DOMAINS_PERSISTENT
FETCHERS = 4  # XMLDesc calls in flight at once: a connection serves threads in parallel
CHUNK = 25  # domains one fetcher fetches in a row (one future per chunk, not per domain)


def module() -> Any:
    import libvirt

    return libvirt


def error(exc: Any, what: str) -> LibvirtError:
    """The LibvirtError for libvirt's ``exc`` raised while doing ``what``."""
    return LibvirtError(f"{what}: {exc.get_error_message()}")


def call(what: str, func: Callable[..., Any], *args: Any,
         missing: int | None = None) -> Any:
    """``func(*args)``; a libvirtError becomes a LibvirtError about ``what``.

    With ``missing`` (an error code such as ERR_NO_DOMAIN), that error gives None.
    """
    libvirt = module()
    try:
        return func(*args)
    except libvirt.libvirtError as exc:
        if missing is not None and exc.get_error_code() == missing:
            return None
        raise error(exc, what) from exc


class Handle:
    """A libvirt object whose every call raises LibvirtError instead of libvirtError."""

    def __init__(self, obj: Any, label: str) -> None:
        self._obj = obj
        self._label = label

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._obj, attr)

        def wrapped(*args: Any) -> Any:
            return call(f"{self._label} ({attr})", method, *args)
        return wrapped


# -- networks -----------------------------------------------------------------------
def lookup_network(host: Host, name: str) -> Handle | None:
    """The libvirt network ``name``, or None when it is not defined."""
    net = call(f"libvirt network {name}", host.connect().networkLookupByName, name,
               missing=ERR_NO_NETWORK)
    return None if net is None else Handle(net, f"libvirt network {name}")


def network_xmls(host: Host) -> dict[str, str]:
    """name -> XML of every libvirt network, active or not."""
    out = {}
    for net in call("libvirt network list", host.connect().listAllNetworks):
        name = net.name()
        out[name] = call(f"libvirt network {name}", net.XMLDesc, 0)
    return out


# -- domains ------------------------------------------------------------------------
# (these take the connection: the CPU engine works on one it is given)
def domains(conn: Any, flags: int = 0) -> list[Handle]:
    """Every domain libvirt lists with ``flags`` (default: all), sorted by name."""
    found = call("listing domains", conn.listAllDomains, flags)
    return [Handle(d, f"domain {d.name()}") for d in sorted(found, key=lambda d: str(d.name()))]


def domain_state(dom: Handle, flags: int) -> tuple[str, bool] | None:
    """The domain's XML (with ``flags``) and whether it runs; None if undefined meanwhile."""
    xml = call(dom._label, dom._obj.XMLDesc, flags, missing=ERR_NO_DOMAIN)
    active = call(dom._label, dom._obj.isActive, missing=ERR_NO_DOMAIN)
    return None if xml is None or active is None else (xml, bool(active))


def domain_states(conn: Any, doms: Sequence[Handle],
                  flags: int) -> Iterator[tuple[Handle, tuple[str, bool] | None]]:
    """Each domain with its :func:`domain_state`, in order, for many domains: the running
    ones from one list call, the XML fetched FETCHERS at a time (one call per domain
    is what a thousand domains cost), CHUNK domains per task of the thread pool (a task
    per domain costs a future, a lock and a wake-up each)."""
    from concurrent.futures import ThreadPoolExecutor

    # the raw 16 bytes of the UUID: UUIDString() formats them (g_snprintf) on every call
    running = {d.UUID() for d in call("listing running domains", conn.listAllDomains,
                                      LIST_ACTIVE)}

    def states(chunk: Sequence[Handle]) -> list[tuple[str, bool] | None]:
        out: list[tuple[str, bool] | None] = []
        for dom in chunk:
            xml = call(dom._label, dom._obj.XMLDesc, flags, missing=ERR_NO_DOMAIN)
            out.append(None if xml is None else (xml, dom._obj.UUID() in running))
        return out

    chunks = [doms[i:i + CHUNK] for i in range(0, len(doms), CHUNK)]
    with ThreadPoolExecutor(FETCHERS) as pool:
        for chunk, found in zip(chunks, pool.map(states, chunks), strict=True):
            yield from zip(chunk, found, strict=True)


def lookup_domain(conn: Any, uuid: str, name: str) -> Handle | None:
    """The domain with ``uuid``, or None when it is not defined."""
    dom = call(f"domain {name}", conn.lookupByUUIDString, uuid, missing=ERR_NO_DOMAIN)
    return None if dom is None else Handle(dom, f"domain {name}")
