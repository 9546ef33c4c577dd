"""Is this a KVM host QEMU can use? What ``virt-host-validate qemu`` checks, natively.

For rule ``qemu`` (doctor): hardware virtualization in the CPU flags (``vmx``: Intel
VT-x, ``svm``: AMD-V), ``/dev/kvm`` present and usable *by the QEMU user* (qemu.conf's
``user``, with its primary group, qemu.conf's ``group`` and its supplementary groups, as
libvirt starts QEMU), ``/dev/vhost-net`` (faster virtio networking) and ``/dev/net/tun``
(guest networking at all). virt-host-validate asks whether the *invoking* user may open
/dev/kvm (root always may); what matters is whether QEMU may.

Usable: on the running system as root, a child process takes the QEMU user's uid and
gids and really opens the device read-write (what QEMU does; ACLs and LSMs count). On
another root (``--root``), or not as root, the mode bits, owner and group of the node
say it. Everything read goes through the Host's root: a test gives a fake root with
device nodes of its own.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from virtdeb import fsio
from virtdeb.host import Host

KVM = "/dev/kvm"
TUN = "/dev/net/tun"
VHOST_NET = "/dev/vhost-net"
CPUINFO = "/proc/cpuinfo"
PASSWD = "/etc/passwd"  # noqa: S105 - a path
GROUP = "/etc/group"


def hardware_virtualization(host: Host) -> str | None:
    """``vmx`` or ``svm`` when the CPU flags have it, "" when not, None when unreadable."""
    try:
        data = fsio.read_bytes(host.path(CPUINFO), CPUINFO)
    except OSError:
        return None
    if not data:
        return None
    flags: set[str] = set()
    for line in data.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    for flag in ("vmx", "svm"):
        if flag in flags:
            return flag
    return ""


def char_device(host: Host, abspath: str) -> os.stat_result | None:
    """The stat of ABSPATH when it is a character device in the root, else None."""
    try:
        st = os.stat(host.path(abspath))
    except OSError:
        return None
    return st if stat.S_ISCHR(st.st_mode) else None


@dataclass(frozen=True)
class Identity:
    """Who QEMU runs as: uid, primary gid and every gid it gets (None: unknown user)."""

    name: str
    uid: int | None
    gid: int | None
    gids: frozenset[int]


def _colon(host: Host, abspath: str) -> list[list[str]]:
    data = fsio.read_bytes(host.path(abspath), abspath) or b""
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith(("#", "+", "-"))]


def _numeric(value: str, table: dict[str, int]) -> int | None:
    """qemu.conf's rule: a name, else a number; ``+N`` is always a number."""
    if value.startswith("+"):
        return int(value[1:]) if value[1:].isdigit() else None
    if value in table:
        return table[value]
    return int(value) if value.isdigit() else None


def qemu_identity(host: Host, user: str, group: str) -> Identity:
    """The uid and gids QEMU gets for qemu.conf's USER and GROUP (libvirt: initgroups)."""
    passwd = {f[0]: f for f in _colon(host, PASSWD) if len(f) >= 4}
    uids = {name: int(f[2]) for name, f in passwd.items() if f[2].isdigit()}
    gid_of = {f[0]: int(f[2]) for f in _colon(host, GROUP) if len(f) >= 3 and f[2].isdigit()}
    uid = _numeric(user, uids)
    name = next((n for n, u in uids.items() if u == uid), user.lstrip("+"))
    gids: set[int] = set()
    primary = _numeric(group, gid_of)
    if primary is not None:
        gids.add(primary)
    entry = passwd.get(name)
    if entry is not None and entry[3].isdigit():
        gids.add(int(entry[3]))
    for f in _colon(host, GROUP):
        if len(f) >= 4 and f[2].isdigit() and name in f[3].split(","):
            gids.add(int(f[2]))
    return Identity(name, uid, primary, frozenset(gids))


def mode_allows(st: os.stat_result, who: Identity) -> bool:
    """Whether the mode bits let WHO read and write the node (owner, else group, else other)."""
    if who.uid == 0:
        return True
    if who.uid is not None and st.st_uid == who.uid:
        bits = (st.st_mode >> 6) & 0o6
    elif st.st_gid in who.gids:
        bits = (st.st_mode >> 3) & 0o6
    else:
        bits = st.st_mode & 0o6
    return bits == 0o6


def open_as(path: Path, who: Identity) -> str | None:
    """Open PATH read-write as WHO in a child process: None when it worked, else why not.

    Needs root (the child drops to WHO's ids); the parent never changes its own ids.
    """
    if who.uid is None or who.gid is None:
        return "unknown user"
    pid = os.fork()
    if pid == 0:  # the child: drop to QEMU's ids, try, report by exit status
        code = 0
        try:
            os.setgroups(sorted(who.gids))
            os.setgid(who.gid)
            os.setuid(who.uid)
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            code = exc.errno if exc.errno and exc.errno < 256 else 255
        except BaseException:  # noqa: BLE001 - the child must never return into the caller
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return os.strerror(code) if 0 < code < 255 and code in errno.errorcode else "failed"


def usable(host: Host, abspath: str, st: os.stat_result, who: Identity) -> str | None:
    """None when WHO can open the device ABSPATH read-write, else a reason for a person."""
    prefix = ""
    if host.is_live and os.geteuid() == 0:
        why = open_as(host.path(abspath), who)
        if why is None:
            return None
        prefix = f"{why}; "
    elif mode_allows(st, who):
        return None
    owner = _name_of(host, PASSWD, st.st_uid)
    group = _name_of(host, GROUP, st.st_gid)
    return f"{prefix}mode {stat.S_IMODE(st.st_mode):04o} {owner}:{group}"


def _name_of(host: Host, abspath: str, number: int) -> str:
    for f in _colon(host, abspath):
        if len(f) >= 3 and f[2] == str(number):
            return f[0]
    return str(number)
