"""virtdeb.system.listeners on the running system: the TCP listeners from sock_diag
(netlink) are those /proc/net/tcp and /proc/net/tcp6 show, with the same fields, in the
same order; tested with real sockets this test opens."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtdeb.host import Host
from virtdeb.system import listeners


def _proc(proto: str) -> list[tuple[str, int, int]]:
    with open(f"/proc/net/{proto}", encoding="ascii") as fh:
        return listeners.parse_table(proto, fh.read())


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """TCP sockets listening on 0.0.0.0, on :: (IPv6 only, where there is IPv6) and on
    127.0.0.1 (not a wildcard), each on a port the kernel picks."""
    opened = []
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"),  # noqa: S104
                            (socket.AF_INET, "127.0.0.1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, 0))
        sock.listen()
        opened.append(sock)
    yield opened
    for sock in opened:
        sock.close()


@pytest.mark.skipif(listeners.diag_listening(socket.AF_INET) is None,
                    reason="no sock_diag netlink here")
def test_netlink_listeners_are_procs(sockets: list[socket.socket]) -> None:
    host = Host()
    for proto in ("tcp", "tcp6"):
        for _ in range(5):  # another process may open or close a listener in between
            ours, proc = listeners.wildcard_sockets(host, proto), _proc(proto)
            if ours == proc:
                break
        assert ours == proc, proto
    for sock in sockets:
        address, port = sock.getsockname()[:2]
        inode = os.fstat(sock.fileno()).st_ino
        proto = "tcp6" if sock.family == socket.AF_INET6 else "tcp"
        wildcard = address != "127.0.0.1"
        assert ((address, port, inode) in listeners.wildcard_sockets(host, proto)) is wildcard
        found = listeners.wildcard_listeners(host, port)
        if wildcard:
            assert [(f.proto, f.inode) for f in found] == [(proto, inode)]
            assert (os.getpid(), found[0].processes[0][1]) in found[0].processes
        else:
            assert found == []


def test_a_fake_root_is_read_from_its_files(tmp_path: Path) -> None:
    """Not the running system: the tables under the Host's root, never netlink."""
    host = Host(root=tmp_path)
    assert listeners.wildcard_sockets(host, "tcp") is None
