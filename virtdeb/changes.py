"""Changes: what a rule's plan() returns and the journal applies and reverts.

A Change knows how to show itself (``diff``), to check that it can still be
made (``prepare``, called for every change of an apply before any is made),
to record the state it replaces (``record``, journaled before it is made), to
make itself (``apply``) and to undo a record (``undo``).  Each kind registers
itself by its ``kind`` name so that revert finds it again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from virtdeb import fsio
from virtdeb.errors import VirtdebError
from virtdeb.host import Host

Record = dict[str, Any]

KINDS: dict[str, type[Change]] = {}


class ConflictError(VirtdebError):
    """The thing to change (or revert) was changed by someone else meanwhile."""

    name = "conflict"
    exit_code = 1


class Change(ABC):
    """One reversible change to the host."""

    kind: ClassVar[str]
    rule: str
    target: str
    # True when the change touches another package's conffile: the
    # maintainer scripts make it only with the administrator's consent.
    foreign: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            KINDS[cls.kind] = cls

    @abstractmethod
    def diff(self) -> str:
        """What the change does, for a person (a unified diff for files)."""

    def prepare(self, host: Host) -> None:  # noqa: B027 - optional hook
        """Raise if the change cannot be made now; writes nothing."""

    @abstractmethod
    def record(self, host: Host) -> Record:
        """The state this change replaces, JSON-serialisable, with ``kind`` and ``target``."""

    @abstractmethod
    def apply(self, host: Host) -> None:
        """Make the change."""

    @classmethod
    @abstractmethod
    def undo(cls, host: Host, record: Record) -> str:
        """Restore the state in ``record``; return a one-line description."""


# base64, difflib and hashlib are imported where used: doctor, which only
# reads, does not pay for them at start-up.  b64/unb64 keep bytes in a journal record.
def b64(data: bytes | None) -> str | None:
    import base64

    return None if data is None else base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes | None:
    import base64

    return None if text is None else base64.b64decode(text)


def _sha(data: bytes | None) -> str | None:
    import hashlib

    return None if data is None else hashlib.sha256(data).hexdigest()


@dataclass
class FileChange(Change):
    """Replace (or create, or remove) one file's bytes."""

    kind: ClassVar[str] = "file"
    rule: str
    target: str  # absolute path on the host
    before: bytes | None
    after: bytes | None  # None: remove the file
    foreign: bool = False
    mode: int | None = None  # for a new file; default 0644
    note: str = field(default="", compare=False)

    def diff(self) -> str:
        import difflib

        def lines(data: bytes | None) -> list[str]:
            return [] if data is None else data.decode("utf-8", "replace").splitlines(True)

        old = "/dev/null" if self.before is None else f"a{self.target}"
        new = "/dev/null" if self.after is None else f"b{self.target}"
        out = "".join(difflib.unified_diff(lines(self.before), lines(self.after), old, new))
        if out and not out.endswith("\n"):
            out += "\n\\ No newline at end of file\n"
        if not out:
            out = f"{'create' if self.before is None else 'empty'} {self.target} (empty file)\n"
        return out

    def prepare(self, host: Host) -> None:
        real = host.check_parent(self.target)
        fsio.check_writable(real, self.target)
        now = fsio.read_bytes(real, self.target)
        if now != self.before:
            raise ConflictError(f"{self.target}: changed while virtdeb was planning;"
                                " run the command again")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "before": b64(self.before),
                "after_sha256": _sha(self.after)}

    def apply(self, host: Host) -> None:
        real = host.check_parent(self.target)
        if self.after is None:
            fsio.remove(real, self.target)
        else:
            fsio.atomic_write(real, self.after, self.target, self.mode)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target = record["target"]
        before = unb64(record["before"])
        real = host.check_parent(target)
        now = fsio.read_bytes(real, target)
        if now == before:
            return f"{target}: already as before"
        if _sha(now) != record["after_sha256"]:
            raise ConflictError(f"{target}: changed since virtdeb wrote it; not reverted."
                                " Compare it with the journal and restore it by hand")
        if before is None:
            fsio.remove(real, target)
            return f"{target}: removed (virtdeb had created it)"
        fsio.atomic_write(real, before, target)
        return f"{target}: restored"
