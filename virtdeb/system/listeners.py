"""Sockets bound to a port on every address, and the processes that hold them.

From /proc/net/{tcp,udp,tcp6,udp6} (as the Host's network namespace shows them)
and the socket inodes of /proc/PID/fd/* under the Host's root (a test points it
at a fake /proc tree).  TCP counts in state LISTEN, UDP in any state (an
unconnected UDP socket is "07", CLOSE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from virtdeb import fsio
from virtdeb.host import Host
from virtdeb.system.procfs import net_text

TABLES = ("tcp", "udp", "tcp6", "udp6")
TCP_LISTEN = "0A"
ANY4 = "0.0.0.0"  # noqa: S104 - read from /proc, never bound


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
        text = net_text(host, f"/proc/net/{proto}")
        if text is None:
            continue
        found += [(proto, a, p, i) for a, p, i in parse_table(proto, text) if p == port]
    if not found:
        return []
    owners = socket_owners(host)
    return [Listener(proto, addr, p, inode, tuple(owners.get(inode, ())))
            for proto, addr, p, inode in found]
