"""Rule ``qemu`` (README.Debian "QEMU/KVM: Dropping Capabilities" and "Access Control").

System QEMU processes run as qemu.conf's ``user``/``group`` (default
``libvirt-qemu``): both must exist.  Domains with ``<interface
type='ethernet'>`` used to need ``clear_emulator_capabilities = 0`` so that
QEMU kept CAP_NET_ADMIN for /etc/qemu-ifup.  That is a security trade-off:
every QEMU process then keeps the capabilities, and a guest that breaks out
of QEMU holds them.  virtdeb sets it only when ``[qemu]
clear_emulator_capabilities = 0`` asks for it, and the change of libvirt's
conffile needs the administrator's consent (``allow_edit = qemu.conf``).

Newer libvirt creates the tap device of an ethernet interface itself and no
longer knows the setting (libvirt 9.0's QEMU driver does not contain the key
any more; Augeas' lens lists it as obsolete).  When the installed driver does
not know it, the rule says so and plans nothing.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Any

from virtdeb import fsio
from virtdeb.edit import Editor
from virtdeb.effects import Change
from virtdeb.errors import LibvirtError
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.system import groups
from virtdeb.system import libvirt as lv

log = logging.getLogger(__name__)

CONF = "/etc/libvirt/qemu.conf"
LENS = "Libvirtd_qemu.lns"
KEY = "clear_emulator_capabilities"
DEFAULT_ID = "libvirt-qemu"
DRIVER_GLOB = "/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so"
SECURITY_NOTE = ("virtdeb ([qemu] clear_emulator_capabilities = 0): QEMU keeps CAP_NET_ADMIN"
                 " and its other capabilities, for <interface type='ethernet'> scripts;"
                 " a guest that escapes QEMU holds them too")
COMMENT = ("virtdeb ([qemu] clear_emulator_capabilities = 0): QEMU keeps CAP_NET_ADMIN etc.",
           "for <interface type='ethernet'> scripts; a guest escaping QEMU holds them too.")
TRADE_OFF = ("README.Debian: ethernet interfaces with a script like /etc/qemu-ifup need"
             f" {KEY} = 0 (QEMU keeps CAP_NET_ADMIN etc.: a security trade-off); consent"
             f" with [qemu] {KEY} = 0 and allow_edit = qemu.conf, then virtdeb apply qemu")


def driver_knows_key(host: Host) -> bool | None:
    """Whether the installed QEMU driver module still reads the key (None: no driver)."""
    found = sorted(glob.glob(str(host.path(DRIVER_GLOB))))
    if not found:
        return None
    data = fsio.read_bytes(Path(found[0]), found[0]) or b""
    return KEY.encode() in data


def ethernet_domains(conn: Any) -> list[str]:
    """Names of the defined domains with an ``<interface type='ethernet'>``."""
    import xml.etree.ElementTree as ET  # here: only with a libvirt connection

    names = []
    for dom in lv.domains(conn):
        state = lv.domain_state(dom, 0)
        if state is None:
            continue  # undefined meanwhile
        root = ET.fromstring(state[0])  # noqa: S314 - trusted: from libvirtd
        if any(i.get("type") == "ethernet" for i in root.iterfind("./devices/interface")):
            names.append(dom.name())
    return names


def _id_exists(value: str, names: dict[str, int]) -> bool:
    """qemu.conf's rule: a name, else a number; ``+N`` is always a number."""
    if value.startswith("+"):
        return value[1:].isdigit() and int(value[1:]) in names.values()
    return value in names or (value.isdigit() and int(value) in names.values())


@register
class Qemu(Rule):
    name = "qemu"
    title = "QEMU user, group and capabilities"

    def _settings(self) -> tuple[str, str, str | None] | None:
        if not self.host.path(CONF).exists():
            return None
        with Editor(self.host, CONF, LENS, comments=False) as ed:  # read only
            return ed.last("user") or DEFAULT_ID, ed.last("group") or DEFAULT_ID, ed.last(KEY)

    def check(self) -> list[Finding]:
        settings = self._settings()
        if settings is None:
            return [self.finding(Status.NA, f"no {CONF}", "the QEMU driver is not installed")]
        user, group, clear = settings
        out = self._identity(user, group)
        out += self._kvm_host(user, group)
        try:
            names = ethernet_domains(self.host.connect())
        except LibvirtError as exc:
            out.append(self.finding(Status.WARN, "cannot list domains for"
                                    " <interface type='ethernet'>", exc.message))
            return out
        except Exception as exc:  # noqa: BLE001 - libvirt.libvirtError, bad XML
            out.append(self.finding(Status.WARN, "cannot list domains for"
                                    f" <interface type='ethernet'>: {exc}"))
            return out
        out.append(self._capabilities(names, clear))
        return out

    def _identity(self, user: str, group: str) -> list[Finding]:
        users = groups.passwd_users(self.host)
        gids = {g.name: g.gid for g in groups.groups(self.host).values()}
        out = []
        for what, value, table in (("user", user, users), ("group", group, gids)):
            if _id_exists(value, table):
                out.append(self.finding(Status.PASS, f"QEMU runs as {what} {value}"))
            else:
                out.append(self.finding(Status.FAIL, f"qemu.conf {what} {value!r} does not"
                                        " exist", f"domains cannot start: create it, or fix"
                                        f" {what} in {CONF}"))
        return out

    def _kvm_host(self, user: str, group: str) -> list[Finding]:
        """virt-host-validate qemu's checks for a KVM host (virtdeb/system/kvm.py)."""
        from virtdeb.system import kvm  # here: only this part of doctor needs it

        if not self.host.path("/dev").is_dir():
            return [self.finding(Status.NA, "no /dev in this root: KVM devices not checked",
                                 "they are checked on the running system")]
        out = []
        hw = kvm.hardware_virtualization(self.host)
        st = kvm.char_device(self.host, kvm.KVM)
        if hw:
            out.append(self.finding(Status.PASS, f"hardware virtualization ({hw})"))
        elif hw == "" and st is not None:
            out.append(self.finding(Status.NOTE, f"no vmx/svm flag in {kvm.CPUINFO}, but"
                                    f" {kvm.KVM} exists", "a virtual machine with nested"
                                    " KVM: guests still get KVM"))
        elif hw == "":
            # as virt-host-validate: a host without it has no KVM to check
            out.append(self.finding(Status.FAIL, "no hardware virtualization (vmx/svm) in"
                                    f" {kvm.CPUINFO} and no {kvm.KVM}", "only emulated CPUs"
                                    " (TCG), much slower: enable VT-x/AMD-V in the firmware"))
        if hw or st is not None:
            if st is None:
                out.append(self.finding(Status.FAIL, f"{kvm.KVM} does not exist",
                                        "load kvm_intel or kvm_amd (modprobe) and enable"
                                        " virtualization in the firmware"))
            else:
                who = kvm.qemu_identity(self.host, user, group)
                why = kvm.usable(self.host, kvm.KVM, st, who)
                if why is None:
                    out.append(self.finding(Status.PASS, f"{kvm.KVM} is usable by QEMU"
                                            f" ({who.name})"))
                else:
                    out.append(self.finding(Status.FAIL, f"{kvm.KVM} is not usable by QEMU"
                                            f" ({who.name}): {why}", "Debian's udev rule"
                                            " makes it 0660 root:kvm; QEMU's user must be"
                                            " in group kvm"))
        for path, status, hint in (
                (kvm.VHOST_NET, Status.WARN, "modprobe vhost_net: faster virtio networking"),
                (kvm.TUN, Status.FAIL, "modprobe tun: guests' networking needs it")):
            if kvm.char_device(self.host, path) is None:
                out.append(self.finding(status, f"{path} does not exist", hint))
            else:
                out.append(self.finding(Status.PASS, f"{path} exists"))
        return out

    def _capabilities(self, names: list[str], clear: str | None) -> Finding:
        if not names:
            return self.finding(Status.PASS, "no domain has <interface type='ethernet'>")
        shown = ", ".join(names)
        known = driver_knows_key(self.host)
        if known is False:
            return self.finding(Status.NOTE, f"ethernet interfaces in {shown}; this libvirt"
                                f" ignores {KEY}", "libvirt creates the tap device itself;"
                                " nothing to change in qemu.conf")
        if clear == "0":
            return self.finding(Status.NOTE, f"ethernet interfaces in {shown}; {KEY} = 0",
                                "QEMU keeps CAP_NET_ADMIN etc.: the security trade-off of"
                                " README.Debian is in effect")
        return self.finding(Status.WARN, f"ethernet interfaces in {shown}, but QEMU drops its"
                            f" capabilities ({KEY} = {clear or '1 (default)'})", TRADE_OFF)

    def plan(self) -> list[Change]:
        if self.host.config.get("qemu", KEY) != "0" or not self.host.path(CONF).exists():
            return []
        if driver_knows_key(self.host) is False:
            log.info("qemu: this libvirt ignores %s; not changing %s", KEY, CONF)
            return []
        with Editor(self.host, CONF, LENS, rule=self.name, foreign=True) as ed:
            if not ed.match(KEY):
                for line in COMMENT:
                    ed.set("#comment[last()+1]", line)
            ed.ensure(KEY, "0")
        for change in ed.changes:
            change.note = SECURITY_NOTE
        return list(ed.changes)
