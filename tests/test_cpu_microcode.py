"""Rule cpu's pure parts and the microcode trigger/boot path on a fake root (no libvirt)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from virtdeb import maint
from virtdeb.cpu import fix, microcode
from virtdeb.cpu import state as cpu_state
from virtdeb.cpu import xml as cpuxml
from virtdeb.host import Host
from virtdeb.outcome import apply
from virtdeb.rules import Status
from virtdeb.rules.cpu import Cpu

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
microcode\t: 0xf4
flags\t\t: fpu vme sse2 hle rtm avx2

processor\t: 1
flags\t\t: fpu vme sse2 hle rtm avx2
"""
NO_DAEMON = "qemu+unix:///system?socket=/nonexistent/virtdeb-test-sock"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(CPUINFO)
    (tmp_path / "etc/virtdeb").mkdir(parents=True)
    (tmp_path / "etc/virtdeb/virtdeb.conf").write_text("[cpu]\non_microcode = nothing\n")
    return tmp_path


def state(root: Path, abspath: str) -> Path:
    return root / abspath.lstrip("/")


def trigger(host: Host) -> None:
    """What maint does when intel-ucode changes: plan, then apply as one journal entry."""
    apply(host, microcode.microcode_triggered(host, ["/usr/lib/firmware/intel-ucode"]),
          "test trigger")


def test_trigger_writes_marker_and_baseline(root: Path) -> None:
    assert maint.main(["triggered", "/usr/lib/firmware/intel-ucode"], root=str(root)) == 0
    marker = json.loads(state(root, microcode.MARKER).read_text())
    assert marker["triggers"] == ["/usr/lib/firmware/intel-ucode"]
    baseline = json.loads(state(root, microcode.BASELINE).read_text())
    assert baseline["cpuinfo_flags"] == ["avx2", "fpu", "hle", "rtm", "sse2", "vme"]
    assert baseline["microcode"] == "0xf4"


def test_other_triggers_leave_cpu_alone(root: Path) -> None:
    assert maint.main(["triggered", "/usr/sbin/dnsmasq"], root=str(root)) == 0
    assert not state(root, microcode.MARKER).exists()


def test_boot_consumes_marker(root: Path) -> None:
    maint.main(["triggered", "/lib/firmware/amd-ucode /usr/sbin/dnsmasq"], root=str(root))
    assert state(root, microcode.MARKER).exists()
    (root / "proc/cpuinfo").write_text(CPUINFO.replace(" hle rtm", "").replace("0xf4", "0xf8"))
    assert maint.main(["boot"], root=str(root)) == 0
    assert not state(root, microcode.MARKER).exists()
    baseline = json.loads(state(root, microcode.BASELINE).read_text())
    assert baseline["cpuinfo_flags"] == ["avx2", "fpu", "sse2", "vme"]  # the new baseline


def test_boot_without_marker_or_change_does_nothing(root: Path) -> None:
    host = Host(root=root, uri=NO_DAEMON)
    assert microcode.boot(host) == []
    assert not state(root, cpu_state.STATE).exists()


def test_boot_keeps_marker_when_libvirt_unreachable(root: Path) -> None:
    (root / "etc/virtdeb/virtdeb.conf").write_text("[cpu]\non_microcode = warn\n")
    host = Host(root=root, uri=NO_DAEMON)
    trigger(host)
    apply(host, microcode.boot(Host(root=root, uri=NO_DAEMON)), "test boot")
    assert state(root, microcode.MARKER).exists()  # retried at the next boot
    assert not state(root, microcode.LAST_REPORT).exists()


def test_boot_notices_changed_features_without_marker(root: Path) -> None:
    (root / "etc/virtdeb/virtdeb.conf").write_text("[cpu]\non_microcode = warn\n")
    host = Host(root=root, uri=NO_DAEMON)
    trigger(host)
    state(root, microcode.MARKER).unlink()
    before = state(root, microcode.BASELINE).read_bytes()
    apply(host, microcode.boot(Host(root=root, uri=NO_DAEMON)), "test boot")
    assert state(root, microcode.BASELINE).read_bytes() == before  # unchanged: nothing done
    (root / "proc/cpuinfo").write_text(CPUINFO.replace(" rtm", ""))
    assert microcode.features_differ(json.loads(before),
                                    microcode.features_now(Host(root=root, uri=NO_DAEMON)))


def test_doctor_warns_without_libvirt_and_shows_state(root: Path) -> None:
    host = Host(root=root, uri=NO_DAEMON)
    trigger(host)
    findings = Cpu(Host(root=root, uri=NO_DAEMON)).check()
    assert findings[0].status is Status.WARN
    assert findings[0].message.startswith("cannot compare the domains' CPUs")
    texts = " | ".join(f.message for f in findings[1:])
    assert "checked again after the next boot" in texts
    assert "6 flags, microcode 0xf4" in texts


DOM = """<domain type='kvm'>
  <name>web</name>
  <uuid>0b6e2d1c-1111-2222-3333-444455556666</uuid>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
  </os>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>Haswell</model>
    <vendor>Intel</vendor>
    <feature policy='require' name='hle'/>
  </cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
"""


def test_parse_incompatible_messages() -> None:
    assert cpuxml.parse_incompatible(
        "the CPU is incompatible with host CPU: Host CPU does not provide required features:"
        " hle, rtm") == (["hle", "rtm"], None)
    assert cpuxml.parse_incompatible(
        "the CPU is incompatible with host CPU: host CPU vendor does not match required CPU"
        " vendor Intel") == ([], "Intel")
    assert cpuxml.parse_incompatible("something else") == ([], None)


def test_parse_domain_and_fragility() -> None:
    dom = cpuxml.parse_domain(DOM)
    assert (dom.name, dom.uuid, dom.model, dom.vendor) == (
        "web", "0b6e2d1c-1111-2222-3333-444455556666", "Haswell", "Intel")
    assert (dom.emulator, dom.arch, dom.machine, dom.virttype) == (
        "/usr/bin/qemu-system-x86_64", "x86_64", "pc-i440fx-7.2", "kvm")
    assert cpuxml.fragility(dom.cpu) == ["fallback=forbid", "match=exact"]
    unchecked = cpuxml.parse_domain(DOM.replace("check='partial'", "check='none'"))
    assert not unchecked.custom and cpuxml.fragility(unchecked.cpu) == []


def test_normalise_ignores_order_and_whitespace() -> None:
    a = ET.fromstring("<cpu match='exact' mode='custom'><model>X</model>"
                      "<feature policy='require' name='a'/>"
                      "<feature name='b' policy='disable'/></cpu>")
    b = ET.fromstring("<cpu mode='custom' match='exact'>\n <feature policy='disable' name='b'/>"
                      "\n <feature name='a' policy='require'/> <model> X </model></cpu>")
    assert cpuxml.normalise(a) == cpuxml.normalise(b)
    c = ET.fromstring("<cpu mode='custom' match='exact'><model>X</model></cpu>")
    assert cpuxml.normalise(a) != cpuxml.normalise(c)


def test_replace_cpu_touches_only_the_cpu_element() -> None:
    dom = cpuxml.parse_domain(DOM)
    assert dom.cpu is not None
    cpu = ET.fromstring(ET.tostring(dom.cpu))
    assert fix.disable_feature(cpu, "hle") and fix.disable_feature(cpu, "rtm")
    assert not fix.disable_feature(cpu, "rtm")
    new = cpuxml.replace_cpu(DOM, cpu)
    assert new == DOM.replace(
        "    <feature policy='require' name='hle'/>\n",
        "    <feature policy='disable' name='hle'/>\n    <feature policy='disable' name='rtm'/>\n")
    assert cpuxml.without_cpu(new) == cpuxml.without_cpu(DOM)
    assert "<cpu" not in cpuxml.without_cpu(DOM) and "<vcpu" not in DOM


def test_configure_records_the_baseline_once(root: Path) -> None:
    """postinst configure leaves a baseline, so the boot unit notices a CPU change that
    came without a microcode package; a later configure keeps the first one."""
    assert maint.main(["configure", ""], root=str(root)) == 0
    first = state(root, microcode.BASELINE).read_bytes()
    assert json.loads(first)["cpuinfo_flags"] == ["avx2", "fpu", "hle", "rtm", "sse2", "vme"]
    (root / "proc/cpuinfo").write_text(CPUINFO.replace(" hle", ""))
    assert maint.main(["configure", "0.1.0"], root=str(root)) == 0
    assert state(root, microcode.BASELINE).read_bytes() == first
    assert not state(root, microcode.MARKER).exists()


def test_state_files_are_journaled_and_revert(root: Path) -> None:
    """The marker and baseline are written through the journal like every other change."""
    from virtdeb.journal import Journal

    host = Host(root=root, uri=NO_DAEMON)
    trigger(host)
    journal = Journal(host)
    [entry] = journal.entries()
    assert entry.targets() == [microcode.BASELINE, microcode.MARKER]
    journal.revert(entry.id)
    assert not state(root, microcode.MARKER).exists()
    assert not state(root, microcode.BASELINE).exists()


def test_maint_rewrites_a_domain_only_when_the_policy_says_fix(root: Path) -> None:
    """A domain's definition is the administrator's: the boot check's fixes are made only
    with [cpu] on_microcode = fix, and otherwise refused with the reason."""
    from virtdeb.effects.domain import DomainXMLChange

    fix_web = DomainXMLChange(rule="cpu", target="domain web", uuid="u", before=DOM,
                              after=DOM.replace("require", "disable"))
    reason = maint.refusal(Host(root=root), fix_web)  # the fixture says nothing
    assert reason is not None and "on_microcode = fix" in reason
    (root / "etc/virtdeb/virtdeb.conf").write_text("[cpu]\non_microcode = fix\n")
    assert maint.refusal(Host(root=root), fix_web) is None
