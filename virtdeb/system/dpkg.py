"""Which installed package owns a file, from dpkg's own file lists.

libvirt was split from 10.6.0-2 on (trixie, sid, bookworm-backports): the
files README.Debian talks about moved from ``libvirt-daemon-system`` (now an
empty metapackage) to ``libvirt-daemon``, ``libvirt-daemon-common``,
``libvirt-daemon-driver-qemu``, ``libvirt-daemon-driver-network``.  Code that
needs the owner of ``/etc/libvirt/qemu.conf`` or the version of the libvirt
that is installed asks :func:`owner` with the path, never a package name.

dpkg records the files of a package in ``/var/lib/dpkg/info/PKG.list`` (or
``PKG:ARCH.list`` for ``Multi-Arch: same``), paths as shipped (``/lib/...``
and ``/usr/lib/...`` are different paths there).  ``hints`` are the packages
tried first (a speed-up: their lists are read before all the others); the
answer is always what a list says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from virtdeb import fsio
from virtdeb.host import Host

INFO = "/var/lib/dpkg/info"

# The owners on bookworm and on the split libvirt (trixie, sid): tried first.
LIBVIRT_HINTS = ("libvirt-daemon-driver-qemu", "libvirt-daemon", "libvirt-daemon-common",
                 "libvirt-daemon-driver-network", "libvirt-daemon-system", "libvirt-common")
LIBVIRTD = "/usr/sbin/libvirtd"


def _lists(host: Host, hints: Iterable[str]) -> Iterable[tuple[str, str]]:
    """(package, path of its .list) for the hinted packages, then for every other."""
    info = host.path(INFO)
    seen: set[str] = set()
    for name in hints:
        plain = f"{name}.list"
        # a Multi-Arch: same package has PKG:ARCH.list instead: scan the (large) directory
        # only then
        found = [plain] if (info / plain).exists() else \
            sorted(p.name for p in info.glob(f"{name}:*.list"))
        for candidate in found:
            seen.add(candidate)
            yield name, f"{INFO}/{candidate}"
    try:
        names = sorted(p.name for p in info.iterdir() if p.name.endswith(".list"))
    except OSError:
        return
    for candidate in names:
        if candidate not in seen:
            yield candidate[: -len(".list")].split(":")[0], f"{INFO}/{candidate}"


def files(host: Host, package: str) -> list[str]:
    """The paths dpkg lists for an installed PACKAGE (empty when it has no list)."""
    for _, listed in _lists(host, (package,)):
        data = fsio.read_bytes(host.path(listed), listed)
        if data is not None:
            return data.decode("utf-8", "replace").splitlines()
        break
    return []


def owner(host: Host, paths: str | Sequence[str], hints: Iterable[str] = ()) -> str | None:
    """The installed package whose file list has one of PATHS (the first found), or None.

    PATHS are tried as given, each against every list: pass both spellings of a
    path that moved (``/lib/...``, ``/usr/lib/...``) when either may be shipped.
    """
    wanted = {paths} if isinstance(paths, str) else set(paths)
    for package, listed in _lists(host, hints):
        data = fsio.read_bytes(host.path(listed), listed)
        if data is None:
            continue
        if not wanted.isdisjoint(data.decode("utf-8", "replace").splitlines()) \
                and host.installed(package):
            return package
    return None


def libvirt_version(host: Host) -> str | None:
    """The version of the installed libvirt daemon (the owner of libvirtd), or None."""
    package = owner(host, LIBVIRTD, LIBVIRT_HINTS)
    return host.version(package) if package else None
