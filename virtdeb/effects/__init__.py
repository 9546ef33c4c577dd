"""Effects: every kind of change to the host, what a rule's plan() returns and the
journal applies and reverts (one module per kind in this package).

A Change knows how to show itself (``diff``), to check that it can still be
made (``prepare``, called for every change of an apply before any is made),
to record the state it replaces (``record``, journaled before it is made), to
make itself (``apply``) and to undo a record (``undo``).  Each kind registers
itself by its ``kind`` name so that revert finds it again.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

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


def sha(data: bytes | None) -> str | None:
    import hashlib

    return None if data is None else hashlib.sha256(data).hexdigest()


def regular_file(host: Host, path: str) -> Path:
    """``path`` on the host, which must (still) be a regular file: a conflict otherwise."""
    real = host.path(path)
    try:
        st = os.lstat(real)
    except FileNotFoundError as exc:
        raise ConflictError(f"{path}: gone while virtdeb was working; run the command"
                            " again") from exc
    if not stat.S_ISREG(st.st_mode) or not host.inside(real.parent):
        raise ConflictError(f"{path}: not a regular file; virtdeb leaves it alone")
    return real
