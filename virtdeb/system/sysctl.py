"""``net.ipv4.ip_forward``: its runtime value and the sysctl.d files that set it.

The files are read as systemd-sysctl and procps read them (sysctl.d(5)): every
``*.conf`` of /etc/sysctl.d, /run/sysctl.d, /usr/local/lib/sysctl.d,
/usr/lib/sysctl.d and /lib/sysctl.d, a name in an earlier directory hiding the
same name in a later one, taken in the order of the names, and /etc/sysctl.conf
last.  The last assignment wins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from virtdeb import fsio
from virtdeb.host import Host
from virtdeb.system.procfs import net_text

IP_FORWARD = "net.ipv4.ip_forward"
# the same switch under its other names
KEYS = (IP_FORWARD, "net.ipv4.conf.all.forwarding")
RUNTIME = "/proc/sys/net/ipv4/ip_forward"
DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d",
        "/lib/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"


@dataclass(frozen=True)
class Assignment:
    path: str
    line: int
    key: str
    value: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def runtime_ip_forward(host: Host) -> str | None:
    """The kernel's current ``net.ipv4.ip_forward`` ("0" or "1"), or None if unknown."""
    text = net_text(host, RUNTIME)
    return text.strip() if text is not None else None


def config_files(host: Host) -> list[str]:
    """The sysctl configuration files in the order they are applied."""
    chosen: dict[str, str] = {}
    for directory in DIRS:
        real = host.path(directory)
        if not real.is_dir() or not host.inside(real):
            continue
        for name in sorted(os.listdir(real)):
            if name.endswith(".conf") and name not in chosen:
                chosen[name] = f"{directory}/{name}"
    files = [chosen[name] for name in sorted(chosen)]
    return [*files, SYSCTL_CONF]


def _read(host: Host, path: str) -> bytes | None:
    """A configuration file's bytes; a symlink (99-sysctl.conf -> ../sysctl.conf) is
    followed while it stays inside the root."""
    real = host.path(path)
    if real.is_symlink():
        target = Path(os.path.realpath(real))
        if not host.inside(target) or target == host.path(SYSCTL_CONF):
            return None  # outside the root, or /etc/sysctl.conf, read last anyway
        real = target
    return fsio.read_bytes(real, path)


def _normal(key: str) -> str:
    return key.strip().lstrip("-").replace("/", ".")


def assignments(host: Host, keys: tuple[str, ...] = KEYS) -> list[Assignment]:
    """Every line of the sysctl files that sets one of ``keys``, in the order applied."""
    out = []
    for path in config_files(host):
        data = _read(host, path)
        if data is None:
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            key, sep, value = stripped.partition("=")
            if sep and _normal(key) in keys:
                out.append(Assignment(path, number, _normal(key), value.strip()))
    return out
