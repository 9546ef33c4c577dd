"""``make demo``: every section of README.Debian, live, on a throwaway Debian system.

Two ways to run it, the same story:

- **booted** (``make demo``): Debian 13 trixie booted in systemd-nspawn over a throwaway
  overlay of ``.cache/booted-trixie`` (tests/harness/booted.py): systemd as PID 1, libvirtd
  started by its socket, polkitd, dnsmasq.service, and a real ``systemctl reboot`` after
  the microcode upgrade, at which virtdeb-cpu-check.service names the guest;
- **chroot** (``make demo MODE=chroot``): an overlay of ``.cache/demo-trixie`` whose own
  libvirtd and virtlogd the test harness runs in private network and mount namespaces
  (tests/harness/libvirtd.py, chroot mode); no init, no reboot.

Every command runs inside, as an administrator would type it, and what it prints is
shown. The story, in order:

1. doctor before anything is configured;
2. install and configure with preseeded debconf answers; doctor after;
3. the default network, with a host address already in 192.168.122.0/24;
4. dnsmasq installed afterwards: the drop-in;
5. the bridge helper's capability and bridge.conf; a qemu reinstall;
6. the libvirt group member, and ``virtdeb acl`` for a read-only user;
7. a guest whose custom CPU requires hle and rtm: check, dry-run, fix, check, revert;
8. the apt hook before an upgrade of intel-microcode with that guest defined;
9. (booted) the reboot after the microcode upgrade: the boot unit names the guest;
10. the diff of /etc, and ``dpkg --purge virtdeb`` removing only virtdeb's files.

The guests of step 7 are never started. They are KVM guests when the machine's KVM CPU
lacks hle and rtm, as in README.Debian; on a CPU that still has TSX, or without KVM (a
booted container has no /dev/kvm) they are TCG guests (type='qemu', check='partial'),
whose emulated CPU has neither.

It ends with a one-screen summary and exits 0 when every step showed what it should
(1 otherwise). Nothing is left on the host: the overlay, the mounts and every process go
with the namespaces. tests/test_demo_story.py runs both modes in ``make check``.

Usage: python3 -m tests.demo_story --image DIR --deb FILE [--booted]
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.harness.booted import BootedError, BootedSystem
from tests.harness.libvirtd import PrivateLibvirtd, PrivateLibvirtdError
from tests.harness.procs import PATH

EMULATOR = "/usr/bin/qemu-system-x86_64"
HOST_ADDRESS = "192.168.122.5/24"  # already there: the default network must move
GUEST = "legacy-guest"
CLONES = ("web1", "web2", "web3", "web4", "web5")  # the same CPU definition as GUEST
READ_ONLY_USER = "auditor"
GROUP_USER = "alice"
PRESEED = f"""\
virtdeb virtdeb/allow_edit multiselect bridge.conf
virtdeb virtdeb/access_users string {GROUP_USER}
virtdeb virtdeb/bridge_allow string br0
virtdeb virtdeb/network_autostart boolean true
virtdeb virtdeb/cpu_on_microcode select warn
"""
TSX = "<feature policy='require' name='hle'/><feature policy='require' name='rtm'/>"
HELPER = "/usr/lib/qemu/qemu-bridge-helper"
DROP_IN = "/etc/dnsmasq.d/00_libvirtd.conf"
BAD_WORDS = ("cannot connect", "Traceback")
# doctor's lines about the machine's own KVM (the demo does not start guests)
KVM_LINES = ("QEMU: /dev/kvm", "QEMU: no hardware virtualization")
APT = "apt-get install -y -q -o Dpkg::Use-Pty=0"
# apt's lines an admin does not need to see here
TERSE = "2>&1 | grep -Ev '^(Get|Selecting|Preparing|Unpacking|Reading|Building|Note)'"


MARKER = "/var/lib/virtdeb/cpu/check-after-boot"
BOOT_UNIT = "virtdeb-cpu-check.service"


class StoryError(Exception):
    """A step did not show what it should."""


class Chroot:
    """The chroot mode: the chroot's own libvirtd in private namespaces."""

    booted = False

    def __init__(self, daemon: PrivateLibvirtd) -> None:
        self.d = daemon

    def argv(self, cmd: str) -> list[str]:
        env = ["env", "-i", f"PATH={PATH}", "LC_ALL=C.UTF-8", "HOME=/root", "TERM=dumb",
               "DEBIAN_FRONTEND=noninteractive"]
        return self.d.ns_argv([*env, "sh", "-c", cmd])

    @property
    def root_view(self) -> Path:
        return self.d.root_view

    def describe(self) -> str:
        return ("A throwaway chroot (an overlay of the cached image) whose own libvirtd and"
                " virtlogd run in a private network and mount namespace:")

    def add_address(self, cidr: str) -> None:
        self.d.add_address(cidr)

    def reboot(self) -> float:
        raise StoryError("a chroot does not boot")


class Booted:
    """The booted mode: systemd as PID 1 in systemd-nspawn."""

    booted = True

    def __init__(self, system: BootedSystem) -> None:
        self.b = system

    def argv(self, cmd: str) -> list[str]:
        return self.b.argv(cmd)

    @property
    def root_view(self) -> Path:
        return self.b.root_view

    def describe(self) -> str:
        return ("A throwaway Debian system booted in systemd-nspawn (an overlay of the cached"
                " image; systemd as PID 1, its own network and /dev):")

    def add_address(self, cidr: str) -> None:
        self.b.run(f"ip link add vdA type veth peer name vdB && ip addr add {cidr} dev vdA"
                   " && ip link set vdB up && ip link set vdA up")

    def reboot(self) -> float:
        return self.b.reboot()


System = Chroot | Booted


@dataclass
class Step:
    number: int
    section: str
    done: str
    status: str = "not run"
    why: str = ""
    seconds: float = 0.0


class Story:
    def __init__(self, system: System, deb: Path, out: TextIO) -> None:
        self.sys = system
        self.deb = deb
        self.out = out
        self.steps: list[Step] = []
        self.facts: dict[str, str] = {}
        self.colour = out.isatty()
        self.virttype = "kvm"

    # ------------------------------------------------------------------ printing
    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def heading(self, text: str) -> None:
        bold, off = ("\033[1m", "\033[0m") if self.colour else ("", "")
        self.say(f"\n{bold}=== {text}{off}")

    def sh(self, cmd: str, *, ok: Sequence[int] = (0,), show: bool = True,
           input: str | None = None) -> str:  # noqa: A002
        """Run CMD (sh -c) inside as root, print it and its output."""
        argv = self.sys.argv(f"cd /root && {cmd}")
        proc = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
        if show:
            self.say(f"# {cmd}")
            if proc.stdout:
                self.out.write(proc.stdout if proc.stdout.endswith("\n") else proc.stdout + "\n")
            if proc.returncode != 0:
                self.say(f"(exit status {proc.returncode})")
        for word in BAD_WORDS:
            if word in proc.stdout:
                raise StoryError(f"{cmd!r} printed {word!r}")
        if proc.returncode not in ok:
            tail = proc.stdout.strip().splitlines()[-3:]
            raise StoryError(f"{cmd!r} exited {proc.returncode}: {' / '.join(tail)}")
        return proc.stdout

    def write(self, abspath: str, text: str) -> None:
        """Put a file into the system (through the host's view of its root)."""
        target = self.sys.root_view / abspath.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    @staticmethod
    def expect(cond: bool, what: str) -> None:
        if not cond:
            raise StoryError(what)

    # ------------------------------------------------------------------ running
    def run(self) -> bool:
        steps: list[tuple[str, str, Callable[[], None]]] = [
            ("doctor before", "virtdeb unpacked, nothing configured", self.step_doctor_before),
            ("install", "preseeded debconf answers, dpkg --configure", self.step_install),
            ("network", "default on a free subnet, active, autostart", self.step_network),
            ("dnsmasq", "dnsmasq installed afterwards: drop-in", self.step_dnsmasq),
            ("bridge", "helper capability, bridge.conf, qemu reinstall", self.step_bridge),
            ("access", "libvirt group member, virtdeb acl read-only", self.step_access),
            ("cpu", "hle/rtm guest: check, dry run, fix, revert", self.step_cpu),
            ("apt hook", "intel-microcode upgrade with a fragile guest", self.step_apt_hook),
            *([("reboot", "boot after the microcode upgrade: the boot check", self.step_reboot)]
              if self.sys.booted else []),
            ("/etc and purge", "diff of /etc, dpkg --purge virtdeb", self.step_purge),
        ]
        self.setup()
        for i, (section, done, func) in enumerate(steps, 1):
            step = Step(i, section, done)
            self.steps.append(step)
            self.heading(f"{i}. {section}")
            t0 = time.monotonic()
            try:
                func()
                step.status = "PASS"
            except (StoryError, PrivateLibvirtdError, BootedError,
                    subprocess.TimeoutExpired) as exc:
                step.status = "FAIL"
                step.why = str(exc)
                self.say(f"!!! step {i} ({section}) failed: {exc}")
            step.seconds = time.monotonic() - t0
            if step.section in self.facts:
                step.done = self.facts[step.section]
        return all(s.status == "PASS" for s in self.steps)

    def setup(self) -> None:
        release = self.sh(". /etc/os-release && echo \"$PRETTY_NAME\"", show=False).strip()
        versions = self.sh("dpkg-query -W -f '${Package} ${Version}\\n' libvirt-daemon"
                           " qemu-system-x86 python3-augeas", show=False).split("\n")
        self.facts["release"] = release
        self.heading(f"virtdeb demo on {release}")
        self.say(self.sys.describe())
        for line in versions:
            if line.strip():
                self.say(f"  {line}")
        self.sys.add_address(HOST_ADDRESS)
        self.say(f"On a link of its own the host already has {HOST_ADDRESS}:")
        self.sh("ip -brief address show vdA")
        self.sh(f"useradd --create-home {GROUP_USER} && useradd --no-create-home"
                f" {READ_ONLY_USER}", show=False)
        self.sh("rm -rf /root/etc.before && cp -a /etc /root/etc.before", show=False)
        (self.sys.root_view / "tmp/virtdeb.deb").write_bytes(self.deb.read_bytes())

    # ------------------------------------------------------------------- steps
    def step_doctor_before(self) -> None:
        self.sh("dpkg --unpack /tmp/virtdeb.deb")
        out = self.sh("virtdeb doctor", ok=(0, 1))
        self.expect("NETWORK:" in out and "CPU:" in out, "doctor shows no NETWORK/CPU lines")

    def step_install(self) -> None:
        self.sh("debconf-set-selections", input=PRESEED, show=False)
        self.say("# debconf-set-selections <<EOF")
        self.out.write(PRESEED)
        self.say("EOF")
        self.sh("dpkg --configure virtdeb")
        self.sh("cat /etc/virtdeb/virtdeb.conf")
        out = self.sh("virtdeb doctor", ok=(0, 1))
        fails = [line for line in out.splitlines() if " : FAIL" in line]
        no_kvm = [line for line in fails if line.startswith(KVM_LINES)]
        if no_kvm:
            self.say("# (this machine gives no usable KVM, and doctor says so; the rest of the"
                     " story does not need it)")
        self.expect(fails == no_kvm, f"doctor still FAILs after the install: {fails}")

    def step_network(self) -> None:
        out = self.sh("virsh net-list --all")
        self.expect("default" in out, "no network 'default'")
        xml = self.sh("virsh net-dumpxml default", show=False)
        ip = ET.fromstring(xml).find("ip")  # noqa: S314 - from our own libvirtd
        self.expect(ip is not None, "network 'default' has no <ip>")
        assert ip is not None
        address = ip.get("address", "")
        self.say(f"# virsh net-dumpxml default | grep '<ip'\n  <ip address='{address}'"
                 f" netmask='{ip.get('netmask')}'>")
        self.expect(not address.startswith("192.168.122."),
                    f"default network still on {address} though the host has {HOST_ADDRESS}")
        self.sh("virsh net-info default | grep -E 'Active|Autostart'")
        out = self.sh("virtdeb doctor network")
        for want in ("network 'default' is active", "network 'default' starts at boot"):
            line = [x for x in out.splitlines() if want in x]
            self.expect(bool(line) and line[0].rstrip().endswith("PASS"), f"not PASS: {want}")
        self.sh("ip -brief address show dev virbr0")
        self.facts["network"] = f"moved off 192.168.122.0/24 to {address}; active, autostart"

    def step_dnsmasq(self) -> None:
        self.sh(f"test ! -e {DROP_IN} && echo 'no {DROP_IN} yet'")
        self.sh(f"{APT} --no-download dnsmasq {TERSE}")
        out = self.sh(f"cat {DROP_IN}")
        self.expect("interface=lo" in out and "bind-interfaces" in out, "drop-in incomplete")
        self.sh("virtdeb doctor dnsmasq")

    def step_bridge(self) -> None:
        out = self.sh(f"getcap {HELPER}")
        self.expect("cap_net_admin" in out, "the helper has no cap_net_admin")
        out = self.sh("cat /etc/qemu/bridge.conf")
        self.expect("allow br0" in out, "bridge.conf does not allow br0")
        pkg = self.sh(f"dpkg -S {HELPER}", show=False).split(":")[0]
        self.sh(f"{APT} --no-download --reinstall {pkg} {TERSE}")
        out = self.sh(f"getcap {HELPER}")
        self.expect("cap_net_admin" in out, f"the capability is gone after reinstalling {pkg}")
        self.sh("virtdeb doctor bridge")
        self.facts["bridge"] = f"cap_net_admin+ep, allow br0; back after --reinstall {pkg}"

    def step_access(self) -> None:
        out = self.sh("getent group libvirt")
        self.expect(GROUP_USER in out, f"{GROUP_USER} is not in group libvirt")
        self.sh(f"virtdeb acl grant {READ_ONLY_USER} --read-only")
        out = self.sh("virtdeb acl show")
        self.expect(READ_ONLY_USER in out, f"acl show does not name {READ_ONLY_USER}")
        self.sh("virtdeb doctor access")
        self.facts["access"] = (f"{GROUP_USER} in group libvirt; acl: {READ_ONLY_USER}"
                                " read-only (polkit rule)")

    def _guest_xml(self, name: str, cpu: str) -> str:
        return (f"<domain type='{self.virttype}'>\n  <name>{name}</name>\n"
                "  <memory unit='MiB'>256</memory>\n"
                f"  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  {cpu}\n"
                f"  <devices><emulator>{EMULATOR}</emulator></devices>\n</domain>\n")

    def _host_model(self, virttype: str) -> ET.Element:
        caps = self.sh(f"virsh domcapabilities --virttype {virttype} --emulatorbin {EMULATOR}"
                       " --arch x86_64 2>&1", show=False, ok=(0, 1))
        if not caps.lstrip().startswith("<"):
            raise StoryError(f"no {virttype} domain capabilities: {caps.strip()}")
        mode = ET.fromstring(caps).find("cpu/mode[@name='host-model']")  # noqa: S314
        self.expect(mode is not None, f"no host-model CPU in the {virttype} capabilities")
        assert mode is not None
        return mode

    def _pick_virttype(self) -> str:
        """kvm when KVM's CPU lacks hle and rtm (the README's story); else TCG (qemu)."""
        try:
            mode = self._host_model("kvm")
        except StoryError as exc:
            why = str(exc).split(": ", 1)[-1].splitlines()[0]
            self.say(f"# No KVM here ({why}): the guests are TCG guests"
                     " (type='qemu'), whose emulated CPU has neither hle nor rtm.")
            return "qemu"
        offered = {f.get("name") for f in mode.findall("feature")
                   if f.get("policy") in ("require", "force")}
        if not {"hle", "rtm"} & offered:
            return "kvm"
        self.say("# This host's KVM CPU still has hle and rtm, so the guests here are TCG"
                 " guests (type='qemu'): QEMU's emulated CPU has neither, as after the microcode"
                 " update of README.Debian.")
        return "qemu"

    def _custom_cpu(self, extra: str) -> str:
        """The hypervisor's host-model CPU written out as a custom CPU, plus EXTRA."""
        mode = self._host_model(self.virttype)
        parts = [f"<model fallback='forbid'>{mode.findtext('model')}</model>"]
        if mode.findtext("vendor"):
            parts.append(f"<vendor>{mode.findtext('vendor')}</vendor>")
        # without hle/rtm of its own (a host-model may list them as disabled)
        parts += [ET.tostring(f, encoding="unicode").strip() for f in mode.findall("feature")
                  if f.get("name") not in ("hle", "rtm")]
        # libvirt makes a TCG guest's CPU check='none' unless told otherwise
        check = " check='partial'" if self.virttype == "qemu" else ""
        return f"<cpu mode='custom' match='exact'{check}>{''.join(parts)}{extra}</cpu>"

    def _dump_sha(self, name: str) -> str:
        xml = self.sh(f"virsh dumpxml --inactive --security-info {name}", show=False)
        return hashlib.sha256(xml.encode()).hexdigest()

    def step_cpu(self) -> None:
        self.virttype = self._pick_virttype()
        cpu = self._custom_cpu(TSX)
        for name in (GUEST, *CLONES):
            self.write(f"/root/{name}.xml", self._guest_xml(name, cpu))
        self.write("/root/db.xml", self._guest_xml("db", self._custom_cpu("")))
        self.say(f"# {GUEST}'s CPU: the host's own model written out, plus (what the"
                 " microcode took away):")
        self.say(f"  {TSX}")
        self.sh(f"for g in {GUEST} {' '.join(CLONES)} db; do virsh define $g.xml; done"
                " | grep -v '^$'")
        before = {n: self._dump_sha(n) for n in (GUEST, *CLONES)}
        out = self.sh("virtdeb cpu-check", ok=(1,))
        self.expect("hle" in out and "rtm" in out, "cpu-check does not name hle and rtm")
        out = self.sh(f"virtdeb cpu-check --domain {GUEST} --fix disable-missing --dry-run",
                      ok=(0, 1))
        added = [line for line in out.splitlines() if line.startswith("+ ")]
        self.expect(any("disable" in a and "'hle'" in a for a in added)
                    and any("disable" in a and "'rtm'" in a for a in added),
                    "the dry run shows no diff disabling hle and rtm")
        self.expect("dry run: nothing defined" in out, "the dry run did not say so")
        out = self.sh("virtdeb cpu-check --fix disable-missing")
        ids = [line.split("virtdeb revert ", 1)[1].strip() for line in out.splitlines()
               if "virtdeb revert " in line]
        self.expect(bool(ids), "no journal entry printed")
        out = self.sh("virtdeb cpu-check")
        self.expect("INCOMPATIBLE" not in out, "still incompatible after the fix")
        self.sh(f"virtdeb revert {shlex.quote(ids[-1])}")
        after = {n: self._dump_sha(n) for n in (GUEST, *CLONES)}
        self.expect(after == before, "revert did not restore the definitions byte for byte")
        self.say(f"# sha256 of 'virsh dumpxml --inactive --security-info {GUEST}' before the"
                 " fix and after the revert:")
        self.say(f"  {before[GUEST]}\n  {after[GUEST]}  (identical)")
        self.sh("virtdeb cpu-check", ok=(1,))
        tcg = " (TCG)" if self.virttype == "qemu" else ""
        self.facts["cpu"] = (f"{GUEST}{tcg} (+{len(CLONES)} sharing its CPU): hle, rtm missing;"
                             " fixed; revert byte for byte")

    def step_apt_hook(self) -> None:
        mk = ("mkucode() { d=/root/ucode-$1; rm -rf $d; mkdir -p $d/DEBIAN"
              " $d/usr/lib/firmware/intel-ucode;"
              " printf 'Package: intel-microcode\\nVersion: %s\\nArchitecture: all\\n"
              "Maintainer: demo <root@localhost>\\nDescription: stand-in for the real"
              " package\\n' $1 > $d/DEBIAN/control; echo $1 > $d/usr/lib/firmware/"
              "intel-ucode/06-3c-03; dpkg-deb --root-owner-group --build $d"
              " /root/intel-microcode_$1_all.deb >/dev/null; }; ")
        self.sh(mk + "mkucode 3.20250211.1 && mkucode 3.20251111.1", show=False)
        self.say("# (two versions of a stand-in package named intel-microcode, built here)")
        self.sh(f"{APT} ./intel-microcode_3.20250211.1_all.deb >/dev/null 2>&1;"
                " dpkg-query -W intel-microcode")
        out = self.sh(f"{APT} ./intel-microcode_3.20251111.1_all.deb {TERSE}")
        self.expect("virtdeb" in out and GUEST in out and "intel-microcode" in out,
                    f"apt showed no virtdeb warning naming {GUEST}")

    def step_reboot(self) -> None:
        self.sh(f"test -e {MARKER} && echo 'the microcode changed: {MARKER} is there'")
        self.say("# systemctl reboot")
        seconds = self.sys.reboot()
        self.say(f"(the system is up again in {seconds:.0f} s)")
        out = self.sh(f"journalctl -b --no-pager -q -o cat -u {BOOT_UNIT}")
        self.expect(GUEST in out and "hle" in out and "rtm" in out,
                    f"{BOOT_UNIT} did not name {GUEST}, hle and rtm at this boot")
        state = self.sh(f"systemctl show -p Result -p ExecMainStatus {BOOT_UNIT}")
        self.expect("Result=success" in state, f"{BOOT_UNIT} did not succeed")
        self.sh(f"test ! -e {MARKER} && echo '{MARKER}: gone (checked once)'")
        self.sh("systemctl --failed --no-legend --plain | grep . || echo 'no failed unit'")
        self.facts["reboot"] = f"{BOOT_UNIT} named {GUEST} and hle, rtm; no failed unit"

    def step_purge(self) -> None:
        self.say("# what the whole story changed in /etc (files):")
        self.sh("diff -rq --no-dereference /root/etc.before /etc"
                " | sed 's#/root/etc.before#/etc(before)#' || true")
        self.say("# ... and the content virtdeb itself wrote:")
        self.sh("for f in /etc/virtdeb/virtdeb.conf /etc/dnsmasq.d/00_libvirtd.conf"
                " /etc/qemu/bridge.conf /etc/apt/apt.conf.d/99virtdeb; do test -e $f &&"
                " diff -uN /root/etc.before${f#/etc} $f | sed 's#/root/etc.before#/etc(before)#';"
                " done || true")
        self.sh("rm -rf /root/etc.story && cp -a /etc /root/etc.story", show=False)
        self.sh("dpkg --purge virtdeb")
        out = self.sh("diff -rq --no-dereference /root/etc.story /etc"
                      " | sed 's#/root/etc.story#/etc(story)#' || true")
        gone = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Only in")]
        changed = [line for line in out.splitlines() if not line.startswith("Only in")
                   and line.strip()]
        self.expect(not changed, f"purge changed other files: {changed}")
        self.expect(bool(gone), "purge removed nothing")
        self.sh("test -d /etc/virtdeb || echo '/etc/virtdeb: gone';"
                " getent group libvirt; getcap /usr/lib/qemu/qemu-bridge-helper || true;"
                " virsh net-list --all")
        self.facts["/etc and purge"] = f"purge removed {len(gone)} of virtdeb's entries, only those"

    # ----------------------------------------------------------------- summary
    def summary(self, seconds: float) -> str:
        rows = [("#", "section", "what was shown", "status")]
        for s in self.steps:
            rows.append((str(s.number), s.section, s.done, s.status))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"virtdeb demo on {self.facts.get('release', '?')}: summary"]
        for r in rows:
            lines.append(f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}")
        failed = [s for s in self.steps if s.status != "PASS"]
        for s in failed:
            lines.append(f"step {s.number} {s.section}: {s.why}")
        lines.append(f"{len(self.steps) - len(failed)} of {len(self.steps)} steps PASS"
                     f" in {seconds:.0f} s")
        return "\n".join(lines)


def host_leftovers(daemon: PrivateLibvirtd, image: Path) -> list[str]:
    """Namespaces, mounts, processes or files of the chroot demo still on the host."""
    left = []
    if Path("/run/netns", daemon.netns).exists():
        left.append(f"network namespace {daemon.netns}")
    mounts = Path("/proc/self/mountinfo").read_text()
    for p in (daemon.scratch, image):
        if str(p) + " " in mounts or str(p) + "/" in mounts:
            left.append(f"a mount under {p}")
    if daemon.scratch.exists():
        left.append(f"scratch directory {daemon.scratch}")
    return left


def run_chroot(image: Path, deb: Path) -> tuple[Story | None, list[str], list[str]]:
    """The story in chroot mode: (story, teardown notes, what was left on the host)."""
    daemon = PrivateLibvirtd(root=image, overlay=True, start_timeout=120)
    try:
        daemon.start()
    except PrivateLibvirtdError as exc:
        first = str(exc).splitlines()[0]
        return None, [f"cannot start the chroot's libvirtd in private namespaces: {first}"], []
    notes = []
    try:
        story = Story(Chroot(daemon), deb, sys.stdout)
        story.run()
    finally:
        try:
            daemon.stop()
        except PrivateLibvirtdError as exc:  # it still tore everything down it could
            notes.append(str(exc).splitlines()[0])
    return story, notes + daemon.teardown_notes, host_leftovers(daemon, image)


def run_booted(image: Path, deb: Path) -> tuple[Story | None, list[str], list[str]]:
    """The story in booted mode: (story, notes, what was left on the host)."""
    system = BootedSystem(image)
    try:
        try:
            seconds = system.boot()
        except BootedError as exc:
            return None, [f"the system did not boot: {str(exc).splitlines()[0]}"], []
        print(f"demo: booted in {seconds:.0f} s")
        story = Story(Booted(system), deb, sys.stdout)
        story.run()
    finally:
        notes = []
        try:
            system.stop()
        except BootedError as exc:
            notes.append(str(exc).splitlines()[0])
    return story, notes + system.notes, system.leftovers()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo_story", description=__doc__.split("\n")[0])
    ap.add_argument("--image", required=True, type=Path,
                    help="the booted image (make booted-images) or the chroot (make demo-image)")
    ap.add_argument("--deb", required=True, type=Path, help="virtdeb's .deb")
    ap.add_argument("--booted", action="store_true", help="boot the image (systemd-nspawn)")
    args = ap.parse_args(argv)
    for path in (args.image / "usr/sbin/libvirtd", args.deb):
        if not path.exists():
            what = "booted-images" if args.booted else "demo-image"
            sys.stderr.write(f"demo: {path} missing: run `make {what} package` first\n")
            return 2
    t0 = time.monotonic()
    run = run_booted if args.booted else run_chroot
    story, notes, left = run(args.image, args.deb)
    for note in notes:
        if note:
            print(f"demo: {note}")
    if story is None:
        return 1
    print("\n" + story.summary(time.monotonic() - t0))
    print("host: " + ("; ".join(left) + " LEFT BEHIND" if left else
                      "every process stopped, namespaces and mounts gone, the image unchanged"))
    return 0 if all(s.status == "PASS" for s in story.steps) and not left else 1


if __name__ == "__main__":
    sys.exit(main())
