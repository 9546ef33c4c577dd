"""The ``file`` effect: replace, create or remove one file's bytes (through fsio's writer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from virtdeb import fsio
from virtdeb.effects import Change, ConflictError, Record, b64, sha, unb64
from virtdeb.host import Host


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
                "after_sha256": sha(self.after)}

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
        if sha(now) != record["after_sha256"]:
            raise ConflictError(f"{target}: changed since virtdeb wrote it; not reverted."
                                " Compare it with the journal and restore it by hand")
        if before is None:
            fsio.remove(real, target)
            return f"{target}: removed (virtdeb had created it)"
        fsio.atomic_write(real, before, target)
        return f"{target}: restored"
