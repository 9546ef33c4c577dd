"""File capabilities (the ``security.capability`` xattr) and dpkg stat overrides, read.

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
alternative then goes through ``dpkg-statoverride`` (effects.statoverride)
so that dpkg keeps the mode across upgrades.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

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


def xattr_error(exc: OSError, shown: str, doing: str) -> SystemCommandError:
    """The error for a failed ``doing`` (read, set) of the xattr: ENOTSUP is NoXattrSupport."""
    if exc.errno == errno.ENOTSUP:
        return NoXattrSupport(f"{shown}: its filesystem has no extended attributes,"
                              " so it cannot carry file capabilities")
    return SystemCommandError(f"{shown}: cannot {doing} {XATTR}: {exc.strerror}")


def read(real: Path, shown: str) -> bytes | None:
    """The file's ``security.capability`` bytes, or None when it has none."""
    try:
        return os.getxattr(real, XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise xattr_error(exc, shown, "read") from exc


def getcap(host: Host, path: str) -> str:
    """``getcap`` of the file, e.g. ``cap_net_admin=ep`` ('' when it has none)."""
    real = host.path(path)
    out = host.run(["getcap", str(real)]).stdout.strip()
    return out[len(str(real)):].strip() if out.startswith(str(real)) else out


def statoverride(host: Host, path: str) -> str | None:
    """The ``dpkg-statoverride --list`` line for ``path``, or None."""
    argv = ["dpkg-statoverride", *root_args(host), "--list", path]
    proc = host.run(argv, check=False)
    line = proc.stdout.strip()
    return line or None


def root_args(host: Host) -> list[str]:
    return [] if host.is_live else ["--root", str(host.root)]
