"""Processes and network namespaces for the test harness: the clean PATH and environment,
whether a pid is gone, the pids of a network namespace, killing them all, and sweeping
what a dead owner (a SIGKILLed pytest) left behind.

Only pids inside the namespaces a caller names (or that it spawned) are ever signalled:
a host daemon is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the harness runs its commands with (PATH, C.UTF-8, HOME), plus EXTRA."""
    env = {"PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str], *, timeout: float = 60, env: dict[str, str] | None = None,
    input: str | None = None,  # noqa: A002
) -> subprocess.CompletedProcess[str]:
    """CMD with a clean environment (or ENV), output captured as text, stdin /dev/null
    (or INPUT); the exit status is the caller's to check."""
    return subprocess.run(
        list(cmd), env=env or clean_env(), capture_output=True, text=True, timeout=timeout,
        input=input, stdin=None if input is not None else subprocess.DEVNULL, check=False,
    )


def netns_pids(netns: str) -> list[int]:
    """Pids (host pid namespace) of the processes in network namespace NETNS."""
    proc = run(["ip", "netns", "pids", netns])
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def netns_exists(netns: str) -> bool:
    return Path("/run/netns", netns).exists()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after "pid (comm)" (state first), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) S ..." - comm may contain spaces or parentheses
    return stat[stat.rfind(")") + 2:].split()


def is_gone(pid: int) -> bool:
    """Whether PID no longer runs (absent, or a zombie)."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def is_zombie(pid: int) -> bool:
    """Whether PID is a zombie (exited, not reaped yet)."""
    fields = _stat(pid)
    return fields is not None and fields[0] == "Z"


def starttime(pid: int) -> str | None:
    """PID's start time (clock ticks after boot), which tells a reused pid apart."""
    fields = _stat(pid)
    return fields[19] if fields is not None else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_pids(netns: str) -> list[int]:
    return [p for p in netns_pids(netns) if not is_gone(p)]


def kill_netns_processes(*namespaces: str, timeout: float = 10.0,
                         spare: Sequence[int] = ()) -> list[int]:
    """SIGTERM, then SIGKILL, every process of NAMESPACES but SPARE; return those still alive."""
    deadline = time.monotonic() + timeout
    term_sent_at: float | None = None
    while True:
        pids = [p for ns in namespaces for p in _live_pids(ns) if p not in spare]
        if not pids:
            return []
        now = time.monotonic()
        if now > deadline:
            return pids
        # SIGTERM first; SIGKILL whatever is still there 2 s later.
        sig = signal.SIGTERM if term_sent_at is None or now - term_sent_at < 2 else signal.SIGKILL
        if term_sent_at is None:
            term_sent_at = now
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.05)


def threads(pid: int) -> list[tuple[str, str]]:
    """PID's threads as (name, kernel wait channel), in tid order; [] when it is gone."""
    found: list[tuple[str, str]] = []
    with contextlib.suppress(OSError):
        for task in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda t: int(t.name)):
            with contextlib.suppress(OSError):
                found.append(((task / "comm").read_text().strip(),
                              (task / "wchan").read_text().strip() or "-"))
    return found


def describe_threads(threads: Sequence[tuple[str, str]]) -> str:
    """"name:wchan" per thread, alike ones counted: what a hung daemon waits on."""
    seen: dict[str, int] = {}
    for name, wchan in threads:
        seen[f"{name}:{wchan}"] = seen.get(f"{name}:{wchan}", 0) + 1
    return ", ".join(k if n == 1 else f"{n}x {k}" for k, n in seen.items()) or "no threads"


def sweep_dead_owners(name_re: re.Pattern[str], base: Path) -> list[str]:
    """Remove the network namespaces and BASE/NAME directories whose NAME matches NAME_RE
    (its first group: the owner's pid) and whose owner is dead: every process of such a
    namespace is killed first. Returns the names removed, sorted."""
    removed: list[str] = []
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names.update(os.listdir("/run/netns"))
    with contextlib.suppress(OSError):
        names.update(os.listdir(base))
    for name in sorted(names):
        m = name_re.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        if netns_exists(name):
            kill_netns_processes(name)
            run(["ip", "netns", "del", name])
        shutil.rmtree(base / name, ignore_errors=True)
        removed.append(name)
    return removed
