"""The one lock: every change to a host is made while holding it.

``flock(2)`` on ``/var/lib/virtdeb/lock`` under the root (the journal's
directory, so ``--root DIR`` from outside and a chroot inside ``DIR`` share
it).  Every apply and revert, from every entry point, holds it from before the
plan is made (from the bytes on disk then) until the journal entry is done.
The holder writes ``PID TOKEN COMMAND`` into the file; the kernel releases the
lock when the holder dies, however it dies.

A second process waits a bounded time (:data:`WAIT_ENV`, ``--wait``), says once
who holds the lock, and then either proceeds or raises :class:`BusyError`
(exit code :data:`BUSY_EXIT`).

Nesting: the commands a holder runs through :meth:`virtdeb.host.Host.run`
get ``VIRTDEB_LOCK=TOKEN`` in their environment.  A process that finds the lock
held by the holder its token names, and that holder among its ancestors
(a dpkg trigger run by a dpkg that a locked ``virtdeb apply`` started), goes on
under the holder's lock instead of waiting for its own parent: the holder is
blocked in that very command, so the two never change the host at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtdeb import fsio
from virtdeb.errors import SystemCommandError, UsageError, VirtdebError

log = logging.getLogger(__name__)

LOCK = "/var/lib/virtdeb/lock"
ENV = "VIRTDEB_LOCK"  # the token a holder hands to the commands it runs
WAIT_ENV = "VIRTDEB_LOCK_WAIT"  # seconds to wait for the lock
DEFAULT_WAIT = 10.0  # the command line; the maintainer scripts wait longer
MAINT_WAIT = 60.0
BUSY_EXIT = 75  # EX_TEMPFAIL of sysexits.h: try again later
POLL = 0.05


class BusyError(VirtdebError):
    """Another virtdeb held the lock for longer than this one would wait."""

    name = "busy"
    label = "busy"
    exit_code = BUSY_EXIT


@dataclass(frozen=True)
class Holder:
    pid: int | None
    token: str
    command: str

    def describe(self) -> str:
        if self.pid is None:
            return "another virtdeb"
        return f"pid {self.pid} ({self.command or 'unknown command'})"


@dataclass
class _Held:
    fd: int | None  # None: held by an ancestor (nested)
    token: str
    depth: int = 1


_held: dict[str, _Held] = {}


def wait_seconds(option: float | None = None, default: float = DEFAULT_WAIT) -> float:
    """The wait: ``option`` (``--wait``), else ``$VIRTDEB_LOCK_WAIT``, else ``default``."""
    if option is not None:
        if option < 0:
            raise UsageError("--wait: give a number of seconds, 0 or more")
        return option
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise UsageError(f"{WAIT_ENV}={text!r}: give a number of seconds, 0 or more")
    return value


def this_command() -> str:
    """How this process was started, for a person: ``virtdeb apply bridge``."""
    import shlex

    argv = list(sys.argv)
    name = os.path.basename(argv[0]) if argv else "python3"
    if name in ("__main__.py", "cli.py", "-m", "-c", ""):
        name = "virtdeb"
    return shlex.join([name, *argv[1:]])


def child_env() -> dict[str, str]:
    """What the commands virtdeb runs get in their environment: the token of a held lock."""
    for held in _held.values():
        return {ENV: held.token}
    return {}


def token(real: Path) -> str | None:
    """The token of lock file ``real`` this process holds (or runs under), or None."""
    held = _held.get(str(real))
    return None if held is None else held.token


def outermost(real: Path) -> bool:
    """Whether the innermost :func:`hold` of lock file ``real`` is the one that took it."""
    held = _held.get(str(real))
    return held is not None and held.depth == 1


def _read_holder(fd: int) -> Holder:
    for attempt in range(3):  # the new holder may not have written its line yet
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        except OSError:
            text = ""
        pid, _, rest = text.strip().partition(" ")
        token, _, command = rest.partition(" ")
        if pid.isdigit():
            return Holder(int(pid), token, command)
        if attempt < 2:
            time.sleep(POLL)
    return Holder(None, "", "")


def _ancestors() -> list[int] | None:
    """The pids of this process's ancestors, or None when /proc cannot tell."""
    out = []
    pid = os.getpid()
    try:
        while pid > 1:
            path = f"/proc/{pid}/stat"
            stat = (fsio.read_bytes(Path(path), path) or b"").decode("ascii", "replace")
            pid = int(stat.rpartition(")")[2].split()[1])  # the field after (comm) is ppid
            out.append(pid)
    except (VirtdebError, ValueError, IndexError):
        return None if not out else out
    return out


def _nested(holder: Holder) -> bool:
    """Whether ``holder`` is the virtdeb that started us (through dpkg, a trigger...)."""
    token = os.environ.get(ENV, "")
    if not token or token != holder.token or holder.pid is None:
        return False
    ancestors = _ancestors()
    return ancestors is None or holder.pid in ancestors


def _flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def hold(real: Path, command: str | None = None, wait: float | None = None) -> Iterator[None]:
    """Hold lock file ``real`` (:data:`LOCK` under a root) for the body; re-entrant
    within one process."""
    key = str(real)
    held = _held.get(key)
    if held is not None:
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
        return
    seconds = wait_seconds(wait)
    fd = _open(real)
    try:
        token = _acquire(fd, seconds, command or this_command())
        if token is None:  # under an ancestor's lock: pass its token on
            _held[key] = _Held(None, os.environ.get(ENV, ""))
        else:
            _held[key] = _Held(fd, token)
        try:
            yield
        finally:
            del _held[key]
            if token is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def _open(real: Path) -> int:
    try:
        fsio.make_dirs(real.parent)
        return os.open(real, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SystemCommandError(f"{LOCK}: cannot open virtdeb's lock: {exc.strerror};"
                                 " nothing was changed") from exc


def _acquire(fd: int, seconds: float, command: str) -> str | None:
    """Take the lock; the token written, or None when running under an ancestor's lock."""
    if not _flock(fd):
        holder = _read_holder(fd)
        if _nested(holder):
            log.info("running under the lock of %s, which started this command",
                     holder.describe())
            return None
        log.warning("waiting up to %g s for the lock: %s holds %s", seconds,
                    holder.describe(), LOCK)
        deadline = time.monotonic() + seconds
        while not _flock(fd):
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                raise BusyError(
                    f"{holder.describe()} still holds {LOCK} after {seconds:g} s;"
                    " nothing was changed: run the command again when it is done"
                    f" (wait longer with --wait SECONDS or {WAIT_ENV})")
            time.sleep(POLL)
    token = f"{os.getpid()}.{os.urandom(8).hex()}"
    line = f"{os.getpid()} {token} {' '.join(command.split())}\n".encode()
    with contextlib.suppress(OSError):  # who holds it is for people; the lock still holds
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
    return token
