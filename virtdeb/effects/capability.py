"""The ``file-capability`` effect: set a file's ``security.capability`` xattr
(see system/caps.py for the format); revert restores the exact old bytes."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from virtdeb.effects import Change, ConflictError, Record, b64, regular_file, unb64
from virtdeb.host import Host
from virtdeb.system.caps import XATTR, read, xattr_error


def write(real: Path, shown: str, data: bytes | None) -> None:
    """Set (or with None remove) the file's ``security.capability``."""
    try:
        if data is None:
            try:
                os.removexattr(real, XATTR, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        else:
            os.setxattr(real, XATTR, data, follow_symlinks=False)
    except OSError as exc:
        raise xattr_error(exc, shown, "set") from exc


@dataclass
class CapabilityChange(Change):
    """Set a file's ``security.capability`` xattr; revert restores the exact old bytes."""

    kind: ClassVar[str] = "file-capability"
    rule: str
    target: str
    before: bytes | None
    after: bytes
    summary: str = "cap_net_admin+ep"

    def diff(self) -> str:
        return f"setcap {self.summary} {self.target}\n"

    def prepare(self, host: Host) -> None:
        real = regular_file(host, self.target)
        if read(real, self.target) != self.before:
            raise ConflictError(f"{self.target}: its capabilities changed while virtdeb was"
                                " planning; run the command again")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "before": b64(self.before),
                "after": b64(self.after)}

    def apply(self, host: Host) -> None:
        write(regular_file(host, self.target), self.target, self.after)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target = record["target"]
        before, after = unb64(record["before"]), unb64(record["after"])
        real = host.path(target)
        if not real.is_file():
            return f"{target}: gone; nothing to restore"
        now = read(real, target)
        if now == before:
            return f"{target}: capabilities already as before"
        if now is None:
            # The file was replaced (a package upgrade drops the xattr); the old
            # value belonged to the old file: nothing of virtdeb's is left.
            return f"{target}: has no capabilities any more (replaced?); left alone"
        if now != after:
            raise ConflictError(f"{target}: capabilities changed since virtdeb set them; not"
                                f" reverted (getcap {target})")
        write(real, target, before)
        return f"{target}: capabilities restored" if before else \
            f"{target}: capabilities removed (virtdeb had set them)"
