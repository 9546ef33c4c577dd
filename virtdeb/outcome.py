"""The one way virtdeb changes a host, and what it says it did.

Every entry point (the commands, maint) plans a list of changes (effects) and hands it
to :func:`apply`, which makes them as one journal entry under virtdeb's lock and
returns an :class:`Outcome`.  The engines (rules, cpu/, maint's planning) never
apply anything themselves.

An Outcome is also the machine-readable result of every command that changes
something (``--json``): :meth:`Outcome.as_json` follows :data:`SCHEMA`, documented
in docs/results.md; a test compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdeb.effects import Change, Record
from virtdeb.host import Host

SCHEMA = 1  # the version of the JSON result; raised when a field changes meaning


@dataclass(frozen=True)
class Refused:
    """A change that was planned and not made, and why (for a person)."""

    rule: str
    target: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"rule": self.rule, "target": self.target, "reason": self.reason}


@dataclass
class Outcome:
    """What one command planned, made and refused."""

    command: str
    changes: list[Change] = field(default_factory=list)  # made (shown, with dry_run)
    refused: list[Refused] = field(default_factory=list)
    journal: str | None = None  # the entry that holds the changes (virtdeb revert ID)
    dry_run: bool = False
    undone: list[dict[str, str]] = field(default_factory=list)  # a revert's changes

    @classmethod
    def of_revert(cls, entry_id: str, command: str, records: Sequence[Record],
                  messages: Sequence[str]) -> Outcome:
        """A revert of journal entry ``entry_id`` (records undone last first, as said)."""
        undone = [{"kind": str(r.get("kind", "")), "rule": "", "target": str(r.get("target", "")),
                   "diff": "", "note": message}
                  for r, message in zip(reversed(records), messages, strict=True)]
        return cls(command, journal=entry_id, undone=undone)

    @property
    def changed(self) -> bool:
        return self.journal is not None

    def as_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "command": self.command, "dry_run": self.dry_run,
                "changed": self.changed, "journal": self.journal,
                "changes": [change_json(c) for c in self.changes] + self.undone,
                "refused": [r.as_json() for r in self.refused]}


def change_json(change: Change) -> dict[str, str]:
    """One change as the JSON result shows it."""
    return {"kind": change.kind, "rule": change.rule, "target": change.target,
            "diff": change.diff(), "note": ""}


def apply(host: Host, changes: Sequence[Change], command: str, *, dry_run: bool = False,
          refused: Sequence[Refused] = ()) -> Outcome:
    """Make ``changes`` as one journal entry (unless ``dry_run``); what was done.

    Under virtdeb's lock: the caller's, when it planned under it (it should), else
    taken here, and then a change planned from bytes that changed meanwhile is
    refused by its ``prepare``.
    """
    from virtdeb.journal import Journal  # here: doctor, which never applies, skips it

    outcome = Outcome(command, list(changes), list(refused), dry_run=dry_run)
    if changes and not dry_run:
        entry = Journal(host).apply(changes, command)
        outcome.journal = None if entry is None else entry.id
    return outcome
