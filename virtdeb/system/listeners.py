"""Sockets bound to a port on every address, and the processes that hold them.

From /proc/net/{tcp,udp,tcp6,udp6} (as the Host's network namespace shows them)
and the socket inodes of /proc/PID/fd/* under the Host's root (a test points it
at a fake /proc tree).  TCP counts in state LISTEN, UDP in any state (an
unconnected UDP socket is "07", CLOSE).

On the running system (root /, no other network namespace) the TCP sockets in
LISTEN come from the kernel's sock_diag netlink interface instead (what ``ss -lt``
asks): reading /proc/net/tcp walks every bucket of the table of established
connections, milliseconds on a host with much memory even when it is empty, while
a dump of listeners only walks the listening sockets.  The same sockets, the same
fields; /proc/net/tcp is read when netlink does not answer.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from virtdeb import fsio
from virtdeb.host import Host
from virtdeb.system.procfs import net_text

TABLES = ("tcp", "udp", "tcp6", "udp6")
TCP_LISTEN = "0A"
ANY4 = "0.0.0.0"  # noqa: S104 - read from /proc, never bound
# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_LISTEN_STATE = 10
_NLMSGHDR = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
_DIAG_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, states, id
# inet_diag_msg: family, state, timer, retrans, id (sport, dport, src, dst, if, cookie),
# expires, rqueue, wqueue, uid, inode
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8xIIIII")


@dataclass(frozen=True)
class Listener:
    proto: str      # tcp, udp, tcp6, udp6
    address: str    # 0.0.0.0 or ::
    port: int
    inode: int
    processes: tuple[tuple[int, str], ...] = ()  # (pid, comm)

    def who(self) -> str:
        """``dnsmasq (pid 42)``, or "an unknown process" when no fd names the socket."""
        if not self.processes:
            return "an unknown process (its socket is in no /proc/PID/fd)"
        names = sorted({f"{comm} (pid {pid})" for pid, comm in self.processes})
        return ", ".join(names)


def parse_table(proto: str, text: str) -> list[tuple[str, int, int]]:
    """(address, port, inode) of the wildcard sockets of one /proc/net table."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or ":" not in fields[1]:
            continue
        addr, _, port = fields[1].partition(":")
        if proto.startswith("tcp") and fields[3] != TCP_LISTEN:
            continue
        if addr.strip("0"):
            continue  # a specific address
        try:
            out.append(("::" if proto.endswith("6") else ANY4, int(port, 16),
                        int(fields[9])))
        except ValueError:
            continue
    return out


def diag_listening(family: int) -> list[tuple[int, int, bytes]] | None:
    """(port, inode, address) of this network namespace's TCP sockets of ``family``
    (AF_INET, AF_INET6) in LISTEN, from sock_diag; None when netlink does not answer."""
    request = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN_STATE)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY,
                            NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    out: list[tuple[int, int, bytes]] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                           NETLINK_SOCK_DIAG) as sock:
            sock.sendto(header + request, (0, 0))
            while True:
                data = sock.recv(65536)
                at = 0
                while at + _NLMSGHDR.size <= len(data):
                    length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, at)
                    if kind == NLMSG_DONE:
                        return out
                    if kind != SOCK_DIAG_BY_FAMILY or length < _NLMSGHDR.size + _DIAG_MSG.size:
                        return None  # NLMSG_ERROR (or what this reader does not know)
                    (_, state, _, _, sport, _, src, _, _, _, _, _, _,
                     inode) = _DIAG_MSG.unpack_from(data, at + _NLMSGHDR.size)
                    if state == TCP_LISTEN_STATE:
                        address = src[:4] if family == socket.AF_INET else src
                        out.append((int.from_bytes(sport, "big"), inode, address))
                    at += (length + 3) & ~3
                if not data:
                    return None
    except OSError:
        return None


def wildcard_sockets(host: Host, proto: str) -> list[tuple[str, int, int]] | None:
    """(address, port, inode) of the wildcard sockets of one table; None if unreadable."""
    if proto.startswith("tcp") and host.is_live and not host.netns:
        listening = diag_listening(socket.AF_INET6 if proto.endswith("6") else socket.AF_INET)
        if listening is not None:
            return [("::" if proto.endswith("6") else ANY4, port, inode)
                    for port, inode, address in listening if not any(address)]
    text = net_text(host, f"/proc/net/{proto}")
    return None if text is None else parse_table(proto, text)


def socket_owners(host: Host) -> dict[int, list[tuple[int, str]]]:
    """socket inode -> [(pid, comm)], from /proc/PID/fd under the Host's root."""
    proc = host.path("/proc")
    owners: dict[int, list[tuple[int, str]]] = {}
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return owners
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to see
        comm = None
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if not (target.startswith("socket:[") and target.endswith("]")):
                continue
            if comm is None:
                raw = fsio.read_bytes(proc / pid / "comm", f"/proc/{pid}/comm")
                comm = raw.decode("utf-8", "replace").strip() if raw else "?"
            owners.setdefault(int(target[8:-1]), []).append((int(pid), comm))
    return owners


def wildcard_listeners(host: Host, port: int) -> list[Listener]:
    """The sockets bound to ``port`` on every address (0.0.0.0 or ::), with their owners."""
    found = []
    for proto in TABLES:
        rows = wildcard_sockets(host, proto)
        found += [(proto, a, p, i) for a, p, i in rows or () if p == port]
    if not found:
        return []
    owners = socket_owners(host)
    return [Listener(proto, addr, p, inode, tuple(owners.get(inode, ())))
            for proto, addr, p, inode in found]
