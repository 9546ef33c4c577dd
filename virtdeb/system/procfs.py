"""Kernel state read from /proc, for the Host's network namespace.

/proc/net/* and /proc/sys/net/* show the network namespace of the process that
reads them.  For the host's own namespace they are read under the Host's root
(a test points it at a fake /proc tree); when the Host names a network namespace
(``host.netns``, tests), they are read by ``cat`` run in that namespace.
"""

from __future__ import annotations

from virtdeb import fsio
from virtdeb.host import Host


def in_netns(host: Host, argv: list[str]) -> list[str]:
    """``argv`` run in the Host's network namespace (unchanged when it names none)."""
    return ["ip", "netns", "exec", host.netns, *argv] if host.netns else argv


def net_text(host: Host, path: str) -> str | None:
    """The text of ``path`` (/proc/net/... or /proc/sys/net/...) as the Host's network
    namespace shows it, or None when it does not exist."""
    if host.netns:
        proc = host.run(in_netns(host, ["cat", path]), check=False)
        return proc.stdout if proc.returncode == 0 else None
    data = fsio.read_bytes(host.path(path), path)
    return None if data is None else data.decode("utf-8", "replace")
