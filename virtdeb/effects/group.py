"""The ``shadowfile`` effect: group membership, a change of /etc/group or /etc/gshadow.

Writing goes through the Editor with Augeas' ``Group`` and ``Gshadow`` lenses, as
:class:`ShadowFileChange`: a file change that holds the shadow suite's lock
(``/etc/.pwd.lock``, what ``lckpwdf(3)`` takes) while it writes, so
``groupadd``/``gpasswd`` running at the same time wait for virtdeb and the other
way round.  :func:`ensure_group` and :func:`set_members` plan such changes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

from virtdeb.edit import Editor
from virtdeb.effects import Record
from virtdeb.effects.file import FileChange
from virtdeb.errors import SystemCommandError
from virtdeb.host import Host
from virtdeb.system.groups import GROUP, GSHADOW, PWD_LOCK, free_system_gid


# -- editing -------------------------------------------------------------------
def _find(ed: Editor, name: str) -> str | None:
    """The tree label of group ``name`` (matched by comparing labels, not a path)."""
    for rel in ed.match("*"):
        if rel.split("[", 1)[0] == name:
            return rel
    return None


def _members(ed: Editor, rel: str, label: str) -> dict[str, str]:
    return {ed.get(p) or "": p for p in ed.match(f"{rel}/{label}")}


def ensure_group(host: Host, name: str, rule: str,
                 members: Sequence[str] = ()) -> list[FileChange]:
    """Changes adding system group ``name`` (with ``members``) where it is missing.

    Like ``addgroup --system NAME`` then ``gpasswd -a USER NAME``: a line in
    /etc/group (``x``, the first free system GID) and in /etc/gshadow (``!``).
    ``name`` is the caller's constant, never user input.
    """
    changes: list[FileChange] = []
    for path, lens, password, label in ((GROUP, "Group.lns", "x", "user"),
                                        (GSHADOW, "Gshadow.lns", "!", "member")):
        if path == GSHADOW and not host.path(GSHADOW).exists():
            continue
        with Editor(host, path, lens, rule=rule) as ed:
            if _find(ed, name) is None:
                ed.set(f"{name}/password", password)
                if path == GROUP:
                    ed.set(f"{name}/gid", str(free_system_gid(host)))
                for user in members:
                    ed.set(f"{name}/{label}[last()+1]", user)
        changes.extend(ShadowFileChange.of(c) for c in ed.changes)
    return changes


def set_members(host: Host, name: str, add: list[str], remove: list[str],
                rule: str) -> list[FileChange]:
    """Changes adding and removing members of group ``name`` (as gpasswd -a/-d does).

    The group must exist in /etc/group (plan :func:`ensure_group` first, on a
    root where it is missing the caller reports it instead).
    """
    changes: list[FileChange] = []
    for path, lens, label in ((GROUP, "Group.lns", "user"), (GSHADOW, "Gshadow.lns", "member")):
        if path == GSHADOW and not host.path(GSHADOW).exists():
            continue
        with Editor(host, path, lens, rule=rule) as ed:
            rel = _find(ed, name)
            if rel is None:
                continue
            for user in remove:
                node = _members(ed, rel, label).get(user)
                if node is not None:
                    ed.remove(node)
            for user in add:
                if user not in _members(ed, rel, label):
                    ed.set(f"{rel}/{label}[last()+1]", user)
        changes.extend(ShadowFileChange.of(c) for c in ed.changes)
    return changes


@contextmanager
def pwd_lock(host: Host) -> Iterator[None]:
    """Hold /etc/.pwd.lock as lckpwdf(3) does, when the root has one."""
    real = host.path(PWD_LOCK)
    try:
        fd = os.open(real, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    except OSError as exc:  # a symlink (ELOOP), a directory, EIO: never a traceback
        raise SystemCommandError(f"{PWD_LOCK}: cannot take the lock: {exc.strerror}") from exc
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ShadowFileChange(FileChange):
    """A change of /etc/group or /etc/gshadow, made under the shadow lock."""

    kind: ClassVar[str] = "shadowfile"

    @classmethod
    def of(cls, change: FileChange) -> ShadowFileChange:
        return cls(change.rule, change.target, change.before, change.after,
                   foreign=change.foreign, mode=change.mode)

    def apply(self, host: Host) -> None:
        with pwd_lock(host):
            super().prepare(host)  # again, under the lock: nobody changed it meanwhile
            super().apply(host)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        with pwd_lock(host):
            return super().undo(host, record)
