"""File capabilities (the ``security.capability`` xattr) and dpkg stat overrides.

The xattr holds a ``struct vfs_cap_data`` (linux/capability.h), little endian:
``magic_etc`` (revision | flags), then for each 32-bit half of the capability
set the ``permitted`` and ``inheritable`` masks; revision 3 appends the
namespace root uid.  ``setcap cap_net_admin+ep FILE`` writes revision 2 with
the effective flag::

    magic_etc   0x02000001  VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    permitted   0x00001000  1 << CAP_NET_ADMIN (12)
    inheritable 0, then 0 0 for capabilities 32..63

Replacing the file (a qemu upgrade or reinstall, ``cp``) drops the xattr.  A
filesystem without xattrs raises :class:`NoXattrSupport`; the setuid
alternative then goes through ``dpkg-statoverride`` (:class:`StatOverrideChange`)
so that dpkg keeps the mode across upgrades.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from virtdeb.changes import Change, ConflictError, Record, b64, unb64
from virtdeb.errors import SystemCommandError
from virtdeb.host import Host

XATTR = "security.capability"
CAP_NET_ADMIN = 12
REVISION_MASK = 0xFF000000
REVISION_2 = 0x02000000
REVISION_3 = 0x03000000
FLAG_EFFECTIVE = 0x000001
_V2 = struct.Struct("<5I")
_V3 = struct.Struct("<6I")


class NoXattrSupport(SystemCommandError):
    """The filesystem of a file has no extended attributes (ENOTSUP)."""

    name = "no-xattr"


@dataclass(frozen=True)
class FileCaps:
    """The parts of a ``security.capability`` value virtdeb looks at."""

    effective: bool
    permitted: int  # 64-bit mask
    inheritable: int
    rootid: int | None  # revision 3 only

    def has(self, cap: int) -> bool:
        return self.effective and bool(self.permitted & (1 << cap))


def parse(data: bytes) -> FileCaps | None:
    """Decode a ``security.capability`` value; None if it is not revision 2 or 3."""
    if len(data) == _V2.size:
        magic, p0, i0, p1, i1 = _V2.unpack(data)
        rootid = None
    elif len(data) == _V3.size:
        magic, p0, i0, p1, i1, rootid = _V3.unpack(data)
    else:
        return None
    if magic & REVISION_MASK not in (REVISION_2, REVISION_3):
        return None
    return FileCaps(bool(magic & FLAG_EFFECTIVE), p0 | p1 << 32, i0 | i1 << 32, rootid)


def encode(caps: FileCaps) -> bytes:
    """The xattr value for ``caps`` (revision 3 when it has a root uid, else 2)."""
    flags = FLAG_EFFECTIVE if caps.effective else 0
    halves = (caps.permitted & 0xFFFFFFFF, caps.inheritable & 0xFFFFFFFF,
              caps.permitted >> 32, caps.inheritable >> 32)
    if caps.rootid is None:
        return _V2.pack(REVISION_2 | flags, *halves)
    return _V3.pack(REVISION_3 | flags, *halves, caps.rootid)


def with_cap(data: bytes | None, cap: int) -> bytes:
    """``data`` with ``cap`` added to permitted and the effective flag set (``+ep``)."""
    old = parse(data) if data is not None else None
    if old is None:
        old = FileCaps(False, 0, 0, None)
    return encode(FileCaps(True, old.permitted | 1 << cap, old.inheritable, old.rootid))


def read(real: Path, shown: str) -> bytes | None:
    """The file's ``security.capability`` bytes, or None when it has none."""
    try:
        return os.getxattr(real, XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        if exc.errno == errno.ENOTSUP:
            raise NoXattrSupport(f"{shown}: its filesystem has no extended attributes,"
                                 " so it cannot carry file capabilities") from exc
        raise SystemCommandError(f"{shown}: cannot read {XATTR}: {exc.strerror}") from exc


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
        if exc.errno == errno.ENOTSUP:
            raise NoXattrSupport(f"{shown}: its filesystem has no extended attributes,"
                                 " so it cannot carry file capabilities") from exc
        raise SystemCommandError(f"{shown}: cannot set {XATTR}: {exc.strerror}") from exc


def getcap(host: Host, path: str) -> str:
    """``getcap`` of the file, e.g. ``cap_net_admin=ep`` ('' when it has none)."""
    real = host.path(path)
    out = host.run(["getcap", str(real)]).stdout.strip()
    return out[len(str(real)):].strip() if out.startswith(str(real)) else out


def _regular(host: Host, path: str) -> Path:
    real = host.path(path)
    try:
        st = os.lstat(real)
    except FileNotFoundError as exc:
        raise ConflictError(f"{path}: gone while virtdeb was working; run the command"
                            " again") from exc
    if not stat.S_ISREG(st.st_mode) or not host.inside(real.parent):
        raise ConflictError(f"{path}: not a regular file; virtdeb leaves it alone")
    return real


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
        real = _regular(host, self.target)
        if read(real, self.target) != self.before:
            raise ConflictError(f"{self.target}: its capabilities changed while virtdeb was"
                                " planning; run the command again")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "before": b64(self.before),
                "after": b64(self.after)}

    def apply(self, host: Host) -> None:
        write(_regular(host, self.target), self.target, self.after)

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


def statoverride(host: Host, path: str) -> str | None:
    """The ``dpkg-statoverride --list`` line for ``path``, or None."""
    argv = ["dpkg-statoverride", *_root_args(host), "--list", path]
    proc = host.run(argv, check=False)
    line = proc.stdout.strip()
    return line or None


def _root_args(host: Host) -> list[str]:
    return [] if host.is_live else ["--root", str(host.root)]


def _mode_owner(real: Path) -> tuple[int, int, int]:
    st = os.lstat(real)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@dataclass
class StatOverrideChange(Change):
    """``dpkg-statoverride --update --add OWNER GROUP MODE PATH``; revert removes it."""

    kind: ClassVar[str] = "statoverride"
    rule: str
    target: str
    owner: str = "root"
    group: str = "root"
    mode: str = "4755"

    def diff(self) -> str:
        return (f"dpkg-statoverride --update --add {self.owner} {self.group} {self.mode}"
                f" {self.target}\n")

    def prepare(self, host: Host) -> None:
        _regular(host, self.target)
        existing = statoverride(host, self.target)
        if existing:
            raise ConflictError(f"{self.target}: already has a dpkg stat override ({existing});"
                                " virtdeb leaves it alone")

    def record(self, host: Host) -> Record:
        mode, uid, gid = _mode_owner(_regular(host, self.target))
        return {"kind": self.kind, "target": self.target, "mode": mode, "uid": uid,
                "gid": gid, "override": f"{self.owner} {self.group} {self.mode}"}

    def apply(self, host: Host) -> None:
        host.run(["dpkg-statoverride", *_root_args(host), "--update", "--add", self.owner,
                  self.group, self.mode, self.target])

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target = record["target"]
        now = statoverride(host, target)
        if now is None:
            return f"{target}: has no stat override; left alone"
        if now.split()[:3] != record["override"].split():
            raise ConflictError(f"{target}: its stat override changed since virtdeb added it"
                                f" ({now}); not reverted")
        host.run(["dpkg-statoverride", *_root_args(host), "--remove", target])
        real = host.path(target)
        if real.is_file() and not real.is_symlink():
            os.chown(real, record["uid"], record["gid"])
            os.chmod(real, record["mode"])
        return f"{target}: stat override removed, mode {record['mode']:o} restored"
