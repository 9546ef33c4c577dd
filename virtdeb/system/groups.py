"""Users and groups of a root: /etc/passwd, /etc/group, /etc/gshadow, /etc/adduser.conf.

Reading is plain parsing of the root's files (``getent`` cannot take a root).
Writing is in effects/group.py.

User names are checked the way Debian's adduser checks them before they get
anywhere near a file: never a path expression, never a shell.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from virtdeb import fsio
from virtdeb.errors import ParseError
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
