"""The journal: every apply, with the state it replaced; revert restores it.

Entries live in ``/var/lib/virtdeb/journal/ID.json`` (mode 0600).  An entry is
written, with every change's "before" record, *before* the first change is
made, and marked done after the last, so an interrupted apply can be reverted
too: a change not yet made reverts to "already as before".

Every apply and revert holds virtdeb's one lock (:mod:`virtdeb.lock`); entry
points take it with :meth:`Journal.locked` *before* they plan, so a plan is
made from the bytes on disk under the lock.  Ids are ``STAMP-N``, each greater
than every id before it, created exclusively: never two entries with one id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtdeb import fsio, lock

# Every kind of change, so that revert finds the kind of each record.
from virtdeb.effects import (  # noqa: F401 - imported for their registration
    KINDS,
    Change,
    alternative,
    capability,
    domain,
    file,
    group,
    network,
    service,
    statoverride,
)
from virtdeb.errors import ParseError, SystemCommandError, UsageError, VirtdebError
from virtdeb.host import Host

log = logging.getLogger(__name__)


@dataclass
class Entry:
    id: str
    command: str
    status: str  # pending | done | reverted
    records: list[dict[str, Any]]
    uri: str = ""  # the libvirt URI of the apply; revert connects there
    owner: str = ""  # the lock token of the process that made it

    def targets(self) -> list[str]:
        return [str(r.get("target")) for r in self.records]


class Journal:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = host.state_dir / "journal"
        self.lock = host.path(lock.LOCK)

    def _path(self, entry_id: str) -> Path:
        return self.dir / f"{entry_id}.json"

    def _save(self, entry: Entry, *, exclusive: bool = False) -> None:
        data = json.dumps(entry.__dict__, indent=1, sort_keys=True).encode()
        shown = f"/var/lib/virtdeb/journal/{entry.id}.json"
        try:
            fsio.make_dirs(self.dir.parent)
            fsio.make_dirs(self.dir, 0o700)
        except OSError as exc:
            raise SystemCommandError(f"{shown}: cannot create its directory:"
                                     f" {exc.strerror}") from exc
        fsio.atomic_write(self._path(entry.id), data + b"\n", shown, mode=0o600,
                          exclusive=exclusive)

    def _ids(self) -> list[tuple[str, int]]:
        """(stamp, n) of every entry file, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(filter(None, (_order(p.stem) for p in self.dir.glob("*.json"))))

    def _new_id(self) -> str:
        """An id greater than every id before it, even if the clock went back."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        ids = self._ids()
        n = 1
        if ids and ids[-1][0] >= stamp:
            stamp, n = ids[-1][0], ids[-1][1] + 1
        return f"{stamp}-{n}"

    def _create(self, entry: Entry) -> None:
        """Save a new entry under an id no other entry has (exclusive create)."""
        for _ in range(1000):
            try:
                self._save(entry, exclusive=True)
                return
            except FileExistsError:
                stamp, n = _order(entry.id) or (entry.id, 0)
                entry.id = f"{stamp}-{n + 1}"
        raise SystemCommandError(f"{self.dir}: cannot find a free journal id")

    @contextlib.contextmanager
    def locked(self, command: str | None = None, wait: float | None = None, *,
               recover: bool = True) -> Iterator[None]:
        """virtdeb's one lock for this root: plan and apply (or revert) inside it.

        Once the lock is held, a journal entry's temp file left by a killed write
        goes, and (``recover``) every entry a killed apply left pending is undone
        first, so that the plan starts from a state the journal knows.
        """
        with lock.hold(self.lock, command, wait):
            fsio.sweep_temps(self.dir)
            if recover and lock.outermost(self.lock):
                self._recover()
            yield

    def _recover(self) -> None:
        mine = lock.token(self.lock)
        try:
            pending = [e for e in self.entries() if e.status == "pending" and e.owner != mine]
        except ParseError as exc:
            log.warning("%s", exc.message)
            return
        for entry in reversed(pending):  # pending entries of dead processes (we hold the lock)
            log.warning("journal entry %s (%s) was interrupted: undoing it before planning",
                        entry.id, entry.command)
            try:
                self._revert(entry.id, None)
            except VirtdebError as exc:
                log.warning("journal entry %s: %s; it stays pending (virtdeb revert --list)",
                            entry.id, exc.message)

    def apply(self, changes: Sequence[Change], command: str) -> Entry | None:
        """Check every change, journal their before-states, then make them.

        Under the lock (taken here if the caller did not take it before planning:
        then a change planned from bytes that changed meanwhile is refused by
        its ``prepare``).
        """
        with self.locked():
            if not changes:
                return None
            for change in changes:
                change.prepare(self.host)
            entry = Entry(self._new_id(), command, "pending",
                          [c.record(self.host) for c in changes], self.host.uri,
                          lock.token(self.lock) or "")
            self._create(entry)
            for change in changes:
                log.info("applying %s: %s", change.rule, change.target)
                change.apply(self.host)
            entry.status = "done"
            self._save(entry)
        return entry

    def entries(self) -> list[Entry]:
        """All entries, oldest first."""
        if not self.dir.is_dir():
            return []
        out = []
        paths = sorted(self.dir.glob("*.json"), key=lambda p: _order(p.stem) or (p.stem, 0))
        for path in paths:
            shown = f"/var/lib/virtdeb/journal/{path.name}"
            try:
                raw = json.loads(fsio.read_bytes(path, shown) or b"")
                out.append(Entry(raw["id"], raw["command"], raw["status"], raw["records"],
                                 str(raw.get("uri") or ""), str(raw.get("owner") or "")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ParseError(shown, None, None, f"unreadable journal entry ({exc})",
                                 "move it away to use the others") from exc
        return out

    def revert(self, entry_id: str | None = None,
               connect: str | None = None) -> tuple[Entry, list[str]]:
        """Undo one entry (default: the newest not yet reverted), last change first.

        libvirt changes are undone on the URI recorded when they were applied,
        unless ``connect`` names another.
        """
        with self.locked(recover=False):
            return self._revert(entry_id, connect)

    def _revert(self, entry_id: str | None, connect: str | None) -> tuple[Entry, list[str]]:
        entries = self.entries()
        if entry_id is None:
            live = [e for e in entries if e.status != "reverted"]
            if not live:
                raise UsageError("nothing to revert: the journal has no applied change")
            entry = live[-1]
        else:
            found = [e for e in entries if e.id == entry_id]
            if not found:
                known = ", ".join(e.id for e in entries[-5:]) or "none"
                raise UsageError(f"no journal entry {entry_id!r} (latest: {known})")
            entry = found[0]
            if entry.status == "reverted":
                raise UsageError(f"journal entry {entry_id} was already reverted")
        messages = []
        hosts: dict[str, Host] = {}
        try:
            for record in reversed(entry.records):
                kind = KINDS.get(record.get("kind", ""))
                if kind is None:
                    raise ParseError(f"/var/lib/virtdeb/journal/{entry.id}.json", None, None,
                                     f"unknown change kind {record.get('kind')!r}",
                                     "this virtdeb is older than the one that wrote it")
                target = str(record.get("target", ""))
                if target.startswith("/"):  # a killed write's temp file goes too
                    fsio.sweep_temps(self.host.check_parent(target).parent)
                uri = connect or str(record.get("uri") or entry.uri or self.host.uri)
                messages.append(kind.undo(self._host_for(uri, hosts), record))
        finally:
            for other in hosts.values():
                other.close()
        entry.status = "reverted"
        self._save(entry)
        return entry, messages

    def _host_for(self, uri: str, hosts: dict[str, Host]) -> Host:
        """The Host to undo a change with: this one, or the same root on ``uri``."""
        if uri == self.host.uri:
            return self.host
        if uri not in hosts:
            hosts[uri] = Host(root=self.host.root, uri=uri, netns=self.host.netns,
                              overrides=self.host.overrides)
        return hosts[uri]


def _order(entry_id: str) -> tuple[str, int] | None:
    """(stamp, n) of an id ``STAMP-N``, for sorting (``-10`` after ``-9``)."""
    stamp, sep, n = entry_id.rpartition("-")
    if not sep or not n.isdigit():
        return None
    return stamp, int(n)
