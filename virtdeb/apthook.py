"""APT ``DPkg::Pre-Install-Pkgs`` hook, protocol version 3: warnings before dpkg runs.

APT sends, on the descriptor named by ``APT_HOOK_INFO_FD`` (stdin if unset)::

    VERSION 3
    APT::Architecture=amd64          configuration lines, up to an empty line
    ...

    intel-microcode 3.2023 amd64 same > 3.2024 amd64 same /var/cache/apt/archives/x.deb
    dnsmasq-base 2.89-1 amd64 same > - - none **REMOVE**

(``pkg oldver oldarch oldMA cmp newver newarch newMA action``, ``-`` for none).
Before a microcode package is installed or upgraded the hook lists the domains
whose CPU definition is fragile; before a package a virtdeb rule relies on is
removed it says what stops working.  It never breaks apt: everything is caught
and it returns 0 (1 only to block, when ``[apt] block_on_fragile = yes``).  The
no-op path is cheap: this module imports only ``os`` and ``sys``, and nothing
else is read or imported unless an action line names a relevant package.
``VIRTDEB_APT_HOOK=0`` suspends it; under ``DEBIAN_FRONTEND=noninteractive``
it prints only what is wrong, in short.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing and collections.abc cost milliseconds: not at run time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import TextIO

MICROCODE = ("intel-microcode", "amd64-microcode")
# Packages a virtdeb rule relies on -> what stops working without them.
RELIED_ON = {
    "dnsmasq-base": "libvirt's NAT networks (the 'default' network) no longer start:"
                    " they need dnsmasq for DHCP and DNS",
    "netcat-openbsd": "qemu+ssh:// connections to hosts with libvirt older than 6.8 fail"
                      " (they run 'nc' on the remote side)",
    "libcap2-bin": "virtdeb can no longer give qemu-bridge-helper cap_net_admin after a"
                   " qemu upgrade (rule bridge): bridged guest networking breaks",
}
NEEDLES = tuple(name.encode() for name in (*MICROCODE, *RELIED_ON))
CHUNK = 1 << 16
KEEP = 64 << 20  # bytes kept for parsing; the rest is read and dropped
QEMU_DEFS = "/etc/libvirt/qemu"


def read_all(fd: int) -> bytes:
    """Everything APT sends, to the end (so APT never writes into a closed pipe)."""
    parts: list[bytes] = []
    kept = 0
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(parts)
        if kept < KEEP:
            parts.append(chunk)
            kept += len(chunk)


def parse(data: bytes) -> tuple[list[tuple[str, str, str]], list[str]] | None:
    """(installed-or-upgraded (pkg, old, new), removed pkgs), or None if not protocol 3."""
    lines = data.decode("utf-8", "replace").split("\n")
    if not lines or lines[0].strip() != "VERSION 3":
        return None
    try:
        start = lines.index("", 1) + 1
    except ValueError:
        return [], []  # truncated inside the configuration
    installs: dict[str, tuple[str, str, str]] = {}
    removes: list[str] = []
    for line in lines[start:]:
        fields = line.split()
        if len(fields) != 9:
            continue
        pkg, old, _, _, _, new, _, _, action = fields
        pkg = pkg.split(":", 1)[0]
        if action == "**REMOVE**" or new == "-":
            if pkg not in removes:
                removes.append(pkg)
        elif action != "**CONFIGURE**" and new != old:
            installs.setdefault(pkg, (pkg, old, new))
    return list(installs.values()), removes


def fragile_domains(root: str) -> list[tuple[list[str], str, list[str]]]:
    """(names, model, reasons) of persistent QEMU domains with a fragile custom CPU, one
    entry per CPU definition (domains cloned from one template share one), in name order."""
    from pathlib import Path

    from virtdeb import fsio
    from virtdeb.cpu.xml import fragility, model_of, normalise, parse_domain
    from virtdeb.errors import VirtdebError

    groups: dict[tuple[str, tuple[str, ...]], tuple[list[str], str, list[str]]] = {}
    directory = os.path.join(root, QEMU_DEFS.lstrip("/"))
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".xml"))
    except OSError:
        return []
    for name in names:
        shown = f"{QEMU_DEFS}/{name}"
        try:
            data = fsio.read_bytes(Path(directory) / name, shown)
            dom = parse_domain(fsio.decode_utf8(data or b"", shown))
        except (VirtdebError, ValueError, SyntaxError):
            continue  # ET.ParseError is a SyntaxError
        reasons = fragility(dom.cpu)
        if reasons and dom.cpu is not None:
            key = (normalise(dom.cpu), tuple(reasons))
            groups.setdefault(key, ([], model_of(dom.cpu), reasons))[0].append(dom.name)
    return list(groups.values())


def block_on_fragile(root: str) -> bool:
    from pathlib import Path

    from virtdeb.config import Config

    try:
        config = Config.load(Path(root) / "etc/virtdeb/virtdeb.conf")
    except Exception:  # noqa: BLE001 - a broken config must not break apt
        return False
    return config.flag("apt", "block_on_fragile")


def warn_microcode(upgrades: Sequence[tuple[str, str, str]], root: str, quiet: bool,
                   out: TextIO) -> bool:
    """Say which domains a microcode update may stop; True when there are some."""
    domains = fragile_domains(root)
    what = ", ".join(f"{p} {'-' if o == '-' else o} -> {n}" for p, o, n in upgrades)
    if not domains:
        if not quiet:
            out.write(f"virtdeb: {what}: no domain has a fragile custom CPU model\n")
        return False
    from virtdeb.cpu.report import abbreviate

    names = "; ".join(f"{abbreviate(n)} ({m}; {', '.join(r)})" for n, m, r in domains)
    if quiet:
        out.write(f"virtdeb: {what}: domains with fragile CPU models: {names};"
                  " after the reboot run: virtdeb cpu-check\n")
        return True
    out.write(f"virtdeb: {what} may remove CPU features (Intel TSX: hle, rtm).\n"
              f"virtdeb: these domains have a custom CPU model that will not start if a"
              f" feature it needs goes away:\n")
    for members, model, reasons in domains:
        count = f" ({len(members)} domains)" if len(members) > 1 else ""
        out.write(f"virtdeb:   {abbreviate(members)}{count}: {model} ({', '.join(reasons)})\n")
    out.write("virtdeb: after the reboot check them with: virtdeb cpu-check\n"
              "virtdeb: and fix them with: virtdeb cpu-check --fix disable-missing"
              " (or model, host-model)\n")
    return True


def warn_removals(removed: Sequence[str], out: TextIO) -> None:
    for pkg in removed:
        if pkg in RELIED_ON:
            out.write(f"virtdeb: removing {pkg}: {RELIED_ON[pkg]}\n")


def run(data: bytes, root: str, quiet: bool, out: TextIO) -> int:
    if not any(needle in data for needle in NEEDLES):
        return 0  # the cheap path: nothing of interest in this transaction
    parsed = parse(data)
    if parsed is None:
        return 0
    installs, removes = parsed
    upgrades = [u for u in installs if u[0] in MICROCODE]
    blocking = False
    if upgrades and warn_microcode(upgrades, root, quiet, out):
        blocking = block_on_fragile(root)
        if blocking:
            out.write("virtdeb: stopping this apt run ([apt] block_on_fragile = yes in"
                      " /etc/virtdeb/virtdeb.conf); set it to no to go on\n")
    warn_removals(removes, out)
    return 1 if blocking else 0


def info_fd(environ: Mapping[str, str]) -> int:
    try:
        return int(environ.get("APT_HOOK_INFO_FD", "0"))
    except ValueError:
        return 0


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         root: str = "/", out: TextIO | None = None) -> int:
    """The hook: read APT's stream, warn on stderr, return 0 (never raises)."""
    try:
        env = os.environ if environ is None else environ
        data = read_all(info_fd(env))
        if env.get("VIRTDEB_APT_HOOK", "1").strip() == "0":
            return 0
        quiet = env.get("DEBIAN_FRONTEND", "") == "noninteractive"
        stream = sys.stderr if out is None else out
        code = run(data, root, quiet, stream)
        stream.flush()
        return code
    except BaseException:  # noqa: BLE001 - the hook must never break apt
        return 0
