"""The root a private daemon runs in, built inside its private mount namespace: the
start.sh lines that mount it (host mode: scratch copies bound over the host's paths;
chroot mode: an overlay of an image, proc, sysfs, a /run tmpfs) with a private /dev
(private-dev.sh), and the directory helpers that lay out the scratch side.

Nothing here mounts anything itself: the lines run in ``unshare -m --propagation
private``, so every mount goes with the namespace and none reaches the host's.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

PRIVATE_DEV = Path(__file__).resolve().with_name("private-dev.sh")
# where a chroot sees the daemon's log directory (SCRATCH/log)
LOG_MOUNT = "/run/vdtest-log"


def gid_in(group_file: Path, name: str) -> int:
    """The gid of group NAME in GROUP_FILE (a chroot's /etc/group); KeyError if absent."""
    for line in group_file.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise KeyError(name)


def mirror_parents(lower: Path, upper: Path, rel: str) -> None:
    """Create UPPER/REL's parent directories with the owner and mode they have in LOWER."""
    here_lower, here_upper = lower, upper
    for part in Path(rel).parent.parts:
        here_lower, here_upper = here_lower / part, here_upper / part
        if here_upper.exists():
            continue
        here_upper.mkdir()
        with contextlib.suppress(OSError):
            st = os.stat(here_lower)
            os.chown(here_upper, st.st_uid, st.st_gid)
            os.chmod(here_upper, st.st_mode & 0o7777)


def replicate_dirs(src: Path, dst: Path) -> None:
    """Create under DST the directory tree of SRC (owner, group, mode), no files."""
    for root, dirs, _files in os.walk(src):
        rel = Path(root).relative_to(src)
        target = dst / rel
        target.mkdir(parents=True, exist_ok=True)
        st = os.stat(root)
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, st.st_mode & 0o7777)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def private_dev(target: str, group_file: Path | None = None,
                kvm_group_access: bool = True) -> str:
    """The start.sh line that mounts a private /dev on TARGET (private-dev.sh): the daemon
    never sees the host's /dev, and nothing done inside reaches the host's nodes. Its
    /dev/kvm is 0660 root:kvm (kvm of GROUP_FILE, or of the host), as Debian's udev rule
    makes it: without udev the host's node is 0600 root, the qemu user (libvirt-qemu,
    group kvm) could not open it, libvirt would find KVM "not available now" and re-probe
    qemu on every lookup (about 32 s for the first defineXML instead of about 4 s).
    ``kvm_group_access=False``: 0600 root.
    """
    gid = ""
    if kvm_group_access:
        with contextlib.suppress(OSError, KeyError):
            gid = str(grp.getgrnam("kvm").gr_gid if group_file is None
                      else gid_in(group_file, "kvm"))
    return f"sh {shlex.quote(str(PRIVATE_DEV))} {target} {gid}".rstrip()


def host_mounts(scratch: Path, binds: Sequence[str], kvm_group_access: bool = True) -> str:
    """Host mode: the start.sh lines that bind SCRATCH/REL over /REL for each of BINDS,
    then mount the private /dev."""
    q = shlex.quote
    mounts = "\n".join(f"mount --bind {q(str(scratch / rel))} /{rel}" for rel in binds)
    return mounts + "\n" + private_dev("/dev", kvm_group_access=kvm_group_access)


def chroot_mounts(root: Path, scratch: Path, log_dir: Path, *, overlay: bool,
                  kvm_group_access: bool = True) -> list[str]:
    """Chroot mode: the start.sh lines that set R to the daemon's root and mount it.

    With OVERLAY, R is SCRATCH/root, an overlay of ROOT (lower, never written) with
    SCRATCH/upper (SCRATCH/upper, work and root must exist); else ROOT itself. Then
    ``proc``, the private /dev (kvm of ROOT's group file), a ``sysfs`` of the network
    namespace, a tmpfs on R/run (with /run/lock, /run/libvirt) and LOG_DIR on
    R/run/vdtest-log (LOG_MOUNT).
    """
    q = shlex.quote
    lines = []
    if overlay:
        lines.append(
            "mount -t overlay overlay -o "
            + q(f"lowerdir={root},upperdir={scratch / 'upper'},workdir={scratch / 'work'}")
            + f" {q(str(scratch / 'root'))}")
        r = q(str(scratch / "root"))
    else:
        r = q(str(root))
    return [
        *lines,
        f"R={r}",
        'mount -t proc proc "$R/proc"',
        private_dev('"$R/dev"', root / "etc/group", kvm_group_access),
        'mount -t sysfs sysfs "$R/sys"',
        'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"',
        f'mkdir -p "$R/run/lock" "$R/run/libvirt" "$R{LOG_MOUNT}"',
        f'mount --bind {q(str(log_dir))} "$R{LOG_MOUNT}"',
    ]
