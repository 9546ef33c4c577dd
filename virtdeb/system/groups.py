"""Users and groups of a root: /etc/passwd, /etc/group, /etc/gshadow, /etc/adduser.conf.

Reading is plain parsing of the root's files (``getent`` cannot take a root).
Writing goes through the Editor with Augeas' ``Group`` and ``Gshadow`` lenses,
as :class:`ShadowFileChange`: a file change that holds the shadow suite's
lock (``/etc/.pwd.lock``, what ``lckpwdf(3)`` takes) while it writes, so
``groupadd``/``gpasswd`` running at the same time wait for virtdeb and the
other way round.

User names are checked the way Debian's adduser checks them before they get
anywhere near a file: never a path expression, never a shell.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from virtdeb import fsio
from virtdeb.changes import FileChange, Record
from virtdeb.edit import Editor
from virtdeb.errors import ParseError, SystemCommandError
from virtdeb.host import Host

GROUP = "/etc/group"
GSHADOW = "/etc/gshadow"
PASSWD = "/etc/passwd"  # noqa: S105 - a path, not a password
ADDUSER_CONF = "/etc/adduser.conf"
PWD_LOCK = "/etc/.pwd.lock"  # noqa: S105 - a path

# adduser 3.134's default NAME_REGEX without its optional trailing "$" (Samba
# machine accounts are not libvirt users, and Augeas' Group lens refuses "$").
DEFAULT_NAME_REGEX = r"^[a-z][a-z0-9_-]*$"
MAX_NAME_BYTES = 32  # adduser's limit, which cannot be turned off
# adduser's checks that cannot be turned off, and the characters the Group lens stores.
_MIN_REGEX = re.compile(r"^[^-+~:,\s/][^:,\s/]*$")
_LENS_WORD = re.compile(r"^[A-Za-z0-9_.-]+$")
SYSTEM_GID_RANGE = (100, 999)


def _adduser_conf(host: Host) -> dict[str, str]:
    """KEY=VALUE settings of the root's /etc/adduser.conf (missing file: none)."""
    data = fsio.read_bytes(host.path(ADDUSER_CONF), ADDUSER_CONF) or b""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip().upper()] = value
    return out


def name_regex(host: Host) -> str:
    """adduser's NAME_REGEX for the root (its default when unset)."""
    return _adduser_conf(host).get("NAME_REGEX") or DEFAULT_NAME_REGEX


def user_name_problem(name: str, regex: str = DEFAULT_NAME_REGEX) -> str | None:
    """Why adduser (or virtdeb) would refuse ``name`` as a user name, or None."""
    if not name:
        return "an empty name"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if name.isdigit():
        return "only digits (ambiguous with a numeric UID)"
    if not _MIN_REGEX.match(name) or not _LENS_WORD.match(name):
        return "not a user name: letters, digits, '_', '-' only, not starting with '-'"
    try:
        if not re.search(regex, name):
            return f"does not match adduser's NAME_REGEX {regex!r}"
    except re.error:
        if not re.search(DEFAULT_NAME_REGEX, name):
            return f"does not match {DEFAULT_NAME_REGEX!r}"
    return None


def system_gid_range(host: Host) -> tuple[int, int]:
    """FIRST_SYSTEM_GID..LAST_SYSTEM_GID from /etc/adduser.conf (default 100-999)."""
    conf = _adduser_conf(host)
    try:
        first = int(conf.get("FIRST_SYSTEM_GID", SYSTEM_GID_RANGE[0]))
        last = int(conf.get("LAST_SYSTEM_GID", SYSTEM_GID_RANGE[1]))
    except ValueError as exc:
        raise ParseError(ADDUSER_CONF, None, None, f"FIRST/LAST_SYSTEM_GID: {exc}") from exc
    return first, last


def _colon_file(host: Host, path: str) -> Iterator[list[str]]:
    data = fsio.read_bytes(host.path(path), path) or b""
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith(("#", "+", "-")):
            yield line.split(":")


def passwd_users(host: Host) -> dict[str, int]:
    """User name -> UID from the root's /etc/passwd."""
    out: dict[str, int] = {}
    for fields in _colon_file(host, PASSWD):
        if len(fields) >= 3 and fields[2].isdigit():
            out.setdefault(fields[0], int(fields[2]))
    return out


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


def groups(host: Host) -> dict[str, Group]:
    """Group name -> Group from the root's /etc/group."""
    out: dict[str, Group] = {}
    for fields in _colon_file(host, GROUP):
        if len(fields) >= 3 and fields[2].isdigit():
            members = tuple(m for m in (fields[3] if len(fields) > 3 else "").split(",") if m)
            out.setdefault(fields[0], Group(fields[0], int(fields[2]), members))
    return out


def free_system_gid(host: Host) -> int:
    """The GID ``addgroup --system`` would pick: the first unused one in the system range."""
    first, last = system_gid_range(host)
    used = {g.gid for g in groups(host).values()}
    for gid in range(first, last + 1):
        if gid in used:
            continue
        if host.is_live and _nss_has_gid(gid):
            continue
        return gid
    raise ParseError(GROUP, None, None, f"no free system GID in {first}-{last}",
                     "free one, or widen FIRST/LAST_SYSTEM_GID in /etc/adduser.conf")


def _nss_has_gid(gid: int) -> bool:
    import grp

    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


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
