"""The journal: every apply, with the state it replaced; revert restores it.

Entries live in ``/var/lib/virtdeb/journal/ID.json`` (mode 0600).  An entry is
written, with every change's "before" record, *before* the first change is
made, and marked done after the last, so an interrupted apply can be reverted
too: a change not yet made reverts to "already as before".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtdeb import fsio

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
from virtdeb.errors import ParseError, SystemCommandError, UsageError
from virtdeb.host import Host

log = logging.getLogger(__name__)


@dataclass
class Entry:
    id: str
    command: str
    status: str  # pending | done | reverted
    records: list[dict[str, Any]]

    def targets(self) -> list[str]:
        return [str(r.get("target")) for r in self.records]


class Journal:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.dir = host.state_dir / "journal"

    def _path(self, entry_id: str) -> Path:
        return self.dir / f"{entry_id}.json"

    def _save(self, entry: Entry) -> None:
        data = json.dumps(entry.__dict__, indent=1, sort_keys=True).encode()
        shown = f"/var/lib/virtdeb/journal/{entry.id}.json"
        try:
            fsio.make_dirs(self.dir.parent)
            fsio.make_dirs(self.dir, 0o700)
        except OSError as exc:
            raise SystemCommandError(f"{shown}: cannot create its directory:"
                                     f" {exc.strerror}") from exc
        fsio.atomic_write(self._path(entry.id), data + b"\n", shown, mode=0o600)

    def _new_id(self) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        n = 1
        while self._path(f"{stamp}-{n}").exists():
            n += 1
        return f"{stamp}-{n}"

    def apply(self, changes: Sequence[Change], command: str) -> Entry | None:
        """Check every change, journal their before-states, then make them."""
        if not changes:
            return None
        for change in changes:
            change.prepare(self.host)
        entry = Entry(self._new_id(), command, "pending",
                      [c.record(self.host) for c in changes])
        self._save(entry)
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
        for path in sorted(self.dir.glob("*.json")):
            shown = f"/var/lib/virtdeb/journal/{path.name}"
            try:
                raw = json.loads(fsio.read_bytes(path, shown) or b"")
                out.append(Entry(raw["id"], raw["command"], raw["status"], raw["records"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ParseError(shown, None, None, f"unreadable journal entry ({exc})",
                                 "move it away to use the others") from exc
        return out

    def revert(self, entry_id: str | None = None) -> tuple[Entry, list[str]]:
        """Undo one entry (default: the newest not yet reverted), last change first."""
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
        for record in reversed(entry.records):
            kind = KINDS.get(record.get("kind", ""))
            if kind is None:
                raise ParseError(f"/var/lib/virtdeb/journal/{entry.id}.json", None, None,
                                 f"unknown change kind {record.get('kind')!r}",
                                 "this virtdeb is older than the one that wrote it")
            messages.append(kind.undo(self.host, record))
        entry.status = "reverted"
        self._save(entry)
        return entry, messages
