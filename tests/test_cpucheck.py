"""``virtdeb cpu-check`` against a real private libvirtd (kvm, /dev/kvm), on three CPUs.

Every test runs against this machine's CPU as libvirt reports it (``host``) and against
two CPUs given to a private libvirtd through edited qemu capabilities
(tests/harness/cpucaps.py): an Intel Haswell that lost TSX to a microcode update, and an
AMD EPYC that lost a feature. ``make check-cpu CPU=...`` runs one of them alone.

Domains are defined (never started) whose custom CPU the host cannot give: by vendor
(Haswell + Intel on an AMD host, EPYC + AMD on an Intel one) and by missing features
(the host-model CPU written out as custom plus two features libvirt knows and the host
lacks, read from the expanded feature set: ``hle`` and ``rtm`` where both are missing),
beside compatible ones. Nothing here names this machine's CPU model or features.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import cpucaps
from tests.harness.libvirtd import PrivateLibvirtd
from virtdeb import cli, maint
from virtdeb.cpu import STRATEGIES, microcode
from virtdeb.host import Host
from virtdeb.rules import Status
from virtdeb.rules.cpu import Cpu

libvirt = pytest.importorskip("libvirt")

FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
EMULATOR = "/usr/bin/qemu-system-x86_64"


@pytest.fixture(scope="module", params=cpucaps.selected(cpucaps.ALL))
def libvirtd(request: pytest.FixtureRequest, probed_caps: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """This module's daemon: one per CPU (overrides the session daemon of the harness)."""
    with cpucaps.cpu_daemon(request.param, probed_caps, tmp_path_factory.mktemp("cpu")) as d:
        yield d


def domain_xml(name: str, cpu: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}"
            f"<devices><emulator>{EMULATOR}</emulator></devices></domain>")


HASWELL_INTEL = ("<cpu mode='custom' match='exact'><model fallback='forbid'>Haswell</model>"
                 "<vendor>Intel</vendor></cpu>")
EPYC_AMD = ("<cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model>"
            "<vendor>AMD</vendor></cpu>")


def foreign_vendor(conn: Any) -> str:
    """A custom CPU of the other vendor than this host's."""
    return EPYC_AMD if cpucaps.host_model(conn).findtext("vendor") == "Intel" else HASWELL_INTEL


@pytest.fixture
def missing(libvirt_conn: Any) -> list[str]:
    return cpucaps.lacking(libvirt_conn)


def required(features: list[str]) -> str:
    return "".join(f"<feature policy='require' name='{f}'/>" for f in features)


def loose_cpu(conn: Any) -> str:
    """A CPU that is neither fragile nor incompatible: a model the host can run, as a
    minimum, with fallback allowed."""
    return (f"<cpu mode='custom' match='minimum'><model fallback='allow'>"
            f"{cpucaps.usable_models(conn)[0]}</model></cpu>")


@pytest.fixture
def domains(libvirt_conn: Any, missing: list[str]) -> dict[str, Any]:
    conn = libvirt_conn
    defs = {
        "tsx": cpucaps.host_model_cpu(conn, missing),
        "tsx-twin": cpucaps.host_model_cpu(conn, missing),  # same: compared once
        "foreign": foreign_vendor(conn),
        "fits": cpucaps.host_model_cpu(conn),
        "loose": loose_cpu(conn),
        "hostmodel": "<cpu mode='host-model'/>",
        "nocpu": "",
    }
    return {name: conn.defineXML(domain_xml(name, cpu)) for name, cpu in defs.items()}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def check_json(capsys: pytest.CaptureFixture[str], uri: str, root: Path,
               *extra: str) -> tuple[int, dict[str, Any]]:
    code, out = run_cli(capsys, "cpu-check", "--connect", uri, "--root", str(root), "--json",
                        *extra)
    return code, json.loads(out)


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["domain"]: d for d in data["domains"]}


def compare(conn: Any, dom: Any) -> int:
    """The comparison done independently of virtdeb (raises when incompatible)."""
    parsed = ET.fromstring(dom.XMLDesc(FLAGS))
    cpu = ET.tostring(parsed.find("cpu"), encoding="unicode")
    ostype = parsed.find("os/type")
    assert ostype is not None
    return int(conn.compareHypervisorCPU(EMULATOR, "x86_64", ostype.get("machine"), "kvm", cpu,
                                         libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE))


def test_report_names_missing_features_and_vendor(
        libvirtd: Any, domains: dict[str, Any], missing: list[str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, data = check_json(capsys, libvirtd.uri, tmp_path)
    assert code == 1
    got = by_name(data)
    assert got["tsx"]["compatible"] is False
    assert sorted(got["tsx"]["missing_features"]) == missing
    assert ("Host CPU does not provide required features: "
            + ", ".join(got["tsx"]["missing_features"])) in got["tsx"]["message"]
    assert got["tsx"]["vendor_mismatch"] is False
    assert got["tsx"]["fragile"] == ["fallback=forbid", "match=exact"]
    assert got["foreign"]["compatible"] is False
    assert got["foreign"]["vendor_mismatch"] is True
    assert "host CPU vendor does not match" in got["foreign"]["message"]
    assert got["fits"]["compatible"] is True and got["fits"]["missing_features"] == []
    assert got["loose"] == {**got["loose"], "compatible": True, "fragile": []}
    assert got["hostmodel"]["compared"] is False
    assert got["nocpu"]["compared"] is False
    # tsx and tsx-twin share one definition: 4 distinct custom CPUs, 4 comparisons.
    assert data["compared"] == 4


def test_text_report_and_domain_filter(libvirtd: Any, domains: dict[str, Any],
                                       missing: list[str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "cpu-check", "--connect", libvirtd.uri, "--root", str(tmp_path),
                        "--domain", "tsx", "--domain", "fits")
    assert code == 1
    assert "tsx (shut off, " in out and "INCOMPATIBLE: missing features: " in out
    assert all(f in out for f in missing)
    assert "fits (shut off, " in out and "foreign" not in out
    code, out = run_cli(capsys, "cpu-check", "--connect", libvirtd.uri, "--root", str(tmp_path),
                        "--domain", "fits")
    assert code == 0
    assert cli.main(["cpu-check", "--connect", libvirtd.uri, "--domain", "nosuch"]) == 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fix_makes_compare_pass_and_revert_restores_bytes(
        strategy: str, libvirtd: Any, libvirt_conn: Any, domains: dict[str, Any],
        missing: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = libvirt_conn
    broken = ["tsx", "tsx-twin", "foreign"]
    before = {n: domains[n].XMLDesc(FLAGS) for n in domains}
    for name in broken:
        with pytest.raises(libvirt.libvirtError):
            compare(conn, domains[name])
    code, data = check_json(capsys, libvirtd.uri, tmp_path, "--fix", strategy)
    assert code == 0, data
    assert sorted(f["domain"] for f in data["fixed"]) == sorted(broken)
    assert all(f["compatible"] for f in data["fixed"])
    for name in broken:
        assert compare(conn, domains[name]) >= 1, name  # passes now, checked by libvirt
        assert domains[name].XMLDesc(FLAGS) != before[name]
    for name in set(domains) - set(broken):
        assert domains[name].XMLDesc(FLAGS) == before[name], name
    after_tsx = ET.fromstring(domains["tsx"].XMLDesc(FLAGS)).find("cpu")
    assert after_tsx is not None
    policies = {f.get("name"): f.get("policy") for f in after_tsx.findall("feature")}
    assert policies[missing[0]] == policies[missing[1]] == "disable"
    if strategy == "disable-missing":
        old = ET.fromstring(before["tsx"]).find("cpu")
        assert old is not None
        old_policies = {f.get("name"): f.get("policy") for f in old.findall("feature")}
        assert {k: v for k, v in policies.items() if v != old_policies.get(k)} == {
            f: "disable" for f in missing}  # exactly the missing ones
    if strategy == "host-model":
        assert after_tsx.get("mode") == "host-model"
    if strategy == "model":
        usable = {m.text for m in ET.fromstring(conn.getDomainCapabilities(
            EMULATOR, "x86_64", None, "kvm", 0)).findall("cpu/mode[@name='custom']/model")
            if m.get("usable") == "yes"}
        assert after_tsx.findtext("model") in usable

    code, out = run_cli(capsys, "revert", "--connect", libvirtd.uri, "--root", str(tmp_path))
    assert code == 0, out
    for name in domains:
        assert domains[name].XMLDesc(FLAGS) == before[name], name  # byte for byte


def test_dry_run_shows_diff_defines_nothing(libvirtd: Any, domains: dict[str, Any],
                                            missing: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    before = domains["tsx"].XMLDesc(FLAGS)
    code, out = run_cli(capsys, "cpu-check", "--connect", libvirtd.uri, "--root", str(tmp_path),
                        "--domain", "tsx", "--fix", "disable-missing", "--dry-run")
    assert f"-    <feature policy='require' name='{missing[0]}'/>" in out
    assert f"+    <feature policy='disable' name='{missing[0]}'/>" in out
    assert "dry run: nothing defined" in out
    assert code == 1
    assert domains["tsx"].XMLDesc(FLAGS) == before
    assert not (tmp_path / "var/lib/virtdeb/journal").exists()


def test_revert_refuses_when_changed_since(libvirtd: Any, libvirt_conn: Any,
                                           domains: dict[str, Any], missing: list[str],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    check_json(capsys, libvirtd.uri, tmp_path, "--domain", "tsx", "--fix", "disable-missing")
    # The administrator edits the CPU again afterwards: revert must not clobber it.
    fixed = domains["tsx"].XMLDesc(FLAGS)
    extra = min(f for f in cpucaps.expanded_features(libvirt_conn) if f"'{f}'" not in fixed)
    edited = fixed.replace(
        f"name='{missing[0]}'", f"name='{missing[0]}'/><feature policy='disable' name='{extra}'", 1)
    libvirt_conn.defineXML(edited)
    now = domains["tsx"].XMLDesc(FLAGS)
    code = cli.main(["revert", "--connect", libvirtd.uri, "--root", str(tmp_path)])
    assert code == 1
    assert "changed since virtdeb rewrote it" in capsys.readouterr().err
    assert domains["tsx"].XMLDesc(FLAGS) == now


def test_doctor_rule_lines(libvirtd: Any, domains: dict[str, Any], missing: list[str],
                           tmp_path: Path) -> None:
    findings = Cpu(Host(root=tmp_path, uri=libvirtd.uri)).check()
    lines = {f.message.split(" ")[0]: f for f in findings}
    assert lines["tsx"].status is Status.FAIL
    assert all(f in lines["tsx"].message for f in missing), lines["tsx"].message
    assert lines["foreign"].status is Status.FAIL
    assert lines["fits"].status is Status.NOTE  # fragile: fallback=forbid
    assert "loose" not in lines and "hostmodel" not in lines


def test_doctor_rule_passes_without_fragile(libvirtd: Any, libvirt_conn: Any,
                                            tmp_path: Path) -> None:
    libvirt_conn.defineXML(domain_xml("loose", loose_cpu(libvirt_conn)))
    findings = Cpu(Host(root=tmp_path, uri=libvirtd.uri)).check()
    assert [f.status for f in findings] == [Status.PASS]


def test_boot_after_microcode_fixes_when_configured(libvirtd: Any, domains: dict[str, Any],
                                                   tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "etc/virtdeb").mkdir(parents=True)
    (tmp_path / "etc/virtdeb/virtdeb.conf").write_text("[cpu]\non_microcode = fix\n")
    host = Host(root=tmp_path, uri=libvirtd.uri)
    with caplog.at_level(logging.WARNING, logger="virtdeb"):
        changes = microcode.microcode_triggered(host, ["/usr/lib/firmware/intel-ucode"])
        maint.applied(host, changes, "triggered", "cpu")
    # the trigger's lines are cpu-check's: one per CPU definition
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if m.startswith("cpu: tsx, tsx-twin (2 domains, ")]) == 1, logged
    assert not [m for m in logged if m.startswith(("cpu: tsx (", "cpu: tsx-twin ("))], logged
    marker = tmp_path / microcode.MARKER.lstrip("/")
    assert marker.exists()
    report = json.loads((tmp_path / microcode.LAST_REPORT.lstrip("/")).read_text())
    assert report["broken"] == 3 and report["fixed"] == []  # trigger time: report only
    maint.applied(host, microcode.boot(Host(root=tmp_path, uri=libvirtd.uri)), "boot", "cpu")
    assert not marker.exists()
    report = json.loads((tmp_path / microcode.LAST_REPORT.lstrip("/")).read_text())
    assert sorted(report["fixed"]) == ["foreign", "tsx", "tsx-twin"]
    conn = libvirtd.connect()
    try:
        for name in report["fixed"]:
            assert compare(conn, conn.lookupByName(name)) >= 1
    finally:
        conn.close()


def test_text_report_one_line_per_definition(libvirtd: Any, domains: dict[str, Any],
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "cpu-check", "--connect", libvirtd.uri, "--root", str(tmp_path))
    assert code == 1
    lines = out.splitlines()
    twins = [line for line in lines if line.startswith("tsx, tsx-twin (2 domains, shut off, ")]
    assert len(twins) == 1 and "INCOMPATIBLE: missing features: " in twins[0]
    assert not [line for line in lines if line.startswith(("tsx (", "tsx-twin ("))]
    # incompatible definitions first, then the rest; one line each, then the summary
    assert [line.split(" (")[0] for line in lines[:4]] == ["foreign", "tsx, tsx-twin", "fits",
                                                           "loose"]
    assert "of 7 domains have a custom CPU model" in lines[4]
    # --json stays per domain
    _, data = check_json(capsys, libvirtd.uri, tmp_path)
    assert {"tsx", "tsx-twin"} <= {d["domain"] for d in data["domains"]}


class _FakeDomain:
    """What domain_states asks of a libvirt domain."""

    def __init__(self, i: int) -> None:
        self.i = i

    def name(self) -> str:
        return f"d{self.i:03d}"

    def XMLDesc(self, flags: int) -> str:  # noqa: N802 - libvirt's name
        return f"<domain><name>d{self.i:03d}</name><flags>{flags}</flags></domain>"

    def UUID(self) -> bytes:  # noqa: N802 - libvirt's name
        return self.i.to_bytes(16, "big")


class _FakeConnection:
    def __init__(self, count: int, running: set[int]) -> None:
        self.doms = [_FakeDomain(i) for i in range(count)]
        self.running = running

    def listAllDomains(self, flags: int) -> list[_FakeDomain]:  # noqa: N802
        from virtdeb.system.libvirt import LIST_ACTIVE

        return [d for d in self.doms if d.i in self.running] if flags == LIST_ACTIVE \
            else self.doms


@pytest.mark.parametrize("count", [0, 1, 24, 25, 26, 101])
def test_domain_states_in_order_in_chunks(count: int) -> None:
    """Fetched CHUNK domains per task, FETCHERS tasks at a time: every domain once, in
    order, running as libvirt lists it (by UUID)."""
    from virtdeb.system import libvirt as lv

    conn = _FakeConnection(count, running={0, 7, 25, 100})
    doms = lv.domains(conn)
    got = [(h._obj.i, state) for h, state in lv.domain_states(conn, doms, 3)]
    assert got == [(i, (f"<domain><name>d{i:03d}</name><flags>3</flags></domain>",
                        i in {0, 7, 25, 100})) for i in range(count)]
