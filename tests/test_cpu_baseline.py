"""The fleet CPU engine's pure parts, on domain capabilities captured from a real libvirtd.

tests/data/fleet/README says what was captured and how the copies were edited into
per-host drift (host B lost hle and rtm; host C has another CPU vendor).  The
libvirt side (survey, baseline, compare) is tested against real daemons in
tests/test_cpu_baseline_libvirtd.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from virtdeb import cli
from virtdeb.cpu import baseline as b
from virtdeb.cpu import domcaps as dc
from virtdeb.cpu import drift as fd
from virtdeb.cpu.compare import Verdict
from virtdeb.cpu.xml import parse_incompatible
from virtdeb.errors import LibvirtError

DATA = Path(__file__).parent / "data" / "fleet"
# libvirt 9.0.0's words for a CPU that needs TSX on a host without it (compareHypervisorCPU,
# FAIL_INCOMPATIBLE), as seen on the AMD EPYC machines these tests were written on
NO_TSX = ("the CPU is incompatible with host CPU: Host CPU does not provide required"
          " features: hle, rtm")
RANK: dict[str, int] = json.loads((DATA / "model-features.json").read_text())


def no_tsx() -> Verdict:
    missing, vendor = parse_incompatible(NO_TSX)
    return Verdict(False, tuple(missing), vendor, NO_TSX)


def read(name: str) -> str:
    return (DATA / name).read_text()


def host(uri: str, label: str, which: str) -> b.HostResult:
    caps = dc.parse_domcaps(read(f"domcaps-{which}.xml"))
    features = dc.required_features(read(f"host-model-expanded-{which}.xml"))
    return b.HostResult(uri, label, hv=None, version="9.0.0",  # type: ignore[arg-type]
                        caps=caps, features=features)


def domain(name: str, cpu: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}</domain>")


def tsx_cpu() -> str:
    """Host A's host-model written out as a custom CPU: it needs hle and rtm."""
    return dc.host_model_xml(dc.parse_domcaps(read("domcaps-A.xml")))


def test_parse_real_domcaps() -> None:
    caps = dc.parse_domcaps(read("domcaps-A.xml"))
    assert (caps.arch, caps.virttype, caps.model, caps.vendor) == ("x86_64", "kvm", "kvm64",
                                                                    "Intel")
    assert caps.usable() == {"486", "pentium", "pentium2", "pentium3"}
    assert len(caps.models) == 53
    assert ("hle", "require") in caps.features and ("pni", "disable") in caps.features
    broadwell = caps.get("Broadwell")
    assert broadwell is not None and not broadwell.usable and broadwell.vendor == "Intel"
    assert broadwell.blockers is None  # libvirt 9.0 names no blockers: compare asks


def test_parse_real_trixie_domcaps_with_blockers() -> None:
    caps = dc.parse_domcaps(read("domcaps-trixie.xml"))  # libvirt 11.3.0, qemu 10.0
    assert (caps.model, caps.vendor, len(caps.models)) == ("kvm64", "Intel", 145)
    assert {"pentium3", "pentium3-v1"} <= caps.usable()
    no_tsx = caps.get("Broadwell-noTSX")
    assert no_tsx is not None and not no_tsx.usable
    assert no_tsx.blockers is not None and "avx2" in no_tsx.blockers
    assert all(m.blockers for m in caps.models if not m.usable)
    # a fleet in the middle of an upgrade: the bookworm host's models rank the common one
    a = dc.parse_domcaps(read("domcaps-A.xml"))
    assert b.pick_models([a, caps], RANK) == ("pentium3", None)


def test_edited_copies_differ_as_described() -> None:
    a = dc.parse_domcaps(read("domcaps-A.xml"))
    nb = dc.parse_domcaps(read("domcaps-B-no-tsx.xml"))
    c = dc.parse_domcaps(read("domcaps-C-amd.xml"))
    assert {n for n, _ in a.features} - {n for n, _ in nb.features} == {"hle", "rtm"}
    assert c.vendor == "AMD" and "pentium3" not in c.usable() and "phenom" in c.usable()


def test_host_model_xml_keeps_the_features_and_can_drop_the_vendor() -> None:
    caps = dc.parse_domcaps(read("domcaps-A.xml"))
    xml = dc.host_model_xml(caps)
    assert dc.required_features(xml) == sorted(n for n, p in caps.features if p == "require")
    assert "<vendor>Intel</vendor>" in xml
    assert "<vendor>" not in dc.host_model_xml(caps, vendor=False)
    assert "name=\"pni\"" in xml and "policy=\"disable\"" in xml


def test_no_host_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no host-model"):
        dc.parse_domcaps("<domainCapabilities><cpu/></domainCapabilities>")


def test_newest_common_model_and_the_better_one_blocked_on_one_host() -> None:
    a = dc.parse_domcaps(read("domcaps-A.xml"))
    nb = dc.parse_domcaps(read("domcaps-B-no-tsx.xml"))
    c = dc.parse_domcaps(read("domcaps-C-amd.xml"))
    assert b.pick_models([a, nb], RANK) == ("pentium3", None)
    # another vendor: pentium3 is not usable on C, phenom only there
    assert b.pick_models([a, nb, c], RANK) == ("pentium2", "phenom")
    # a TSX model usable on A only (as on a host with TSX): the better model
    def usable(caps: dc.Caps, name: str) -> dc.Caps:
        return dataclasses.replace(caps, models=tuple(
            dataclasses.replace(m, usable=True) if m.name == name else m for m in caps.models))
    assert b.pick_models([usable(a, "Broadwell"), nb], RANK) == ("pentium3", "Broadwell")
    assert b.pick_models([], RANK) == (None, None)


def test_guest_kinds() -> None:
    g = dc.parse_guest("A", domain("tsx", tsx_cpu()), False)
    assert g.mode == "custom" and g.checked and g.cpu_xml and g.key == "tsx@A"
    assert dc.move_without_compare(g, "B") is None  # compared there
    assert dc.move_without_compare(g, "A") == dc.Move(True, "home")
    hm = dc.parse_guest("A", domain("hm", "<cpu mode='host-model'/>"), False)
    assert dc.move_without_compare(hm, "B").state == "adapts"  # type: ignore[union-attr]
    hp = dc.parse_guest("A", domain("hp", "<cpu mode='host-passthrough'/>"), True)
    assert dc.move_without_compare(hp, "B").can is None  # type: ignore[union-attr]
    none = dc.parse_guest("A", domain("plain", ""), False)
    assert none.mode == "default" and dc.move_without_compare(none, "B").can  # type: ignore
    move = dc.move_from_verdict(no_tsx())
    assert (move.can, move.missing) == (False, ("hle", "rtm"))


def fleet(hosts: list[b.HostResult], moves: dict[str, dict[str, b.Move]]) -> dict[str, Any]:
    guests = {"tsx": tsx_cpu(),
              "web": "<cpu mode='custom' match='exact'><model>pentium2</model></cpu>"}
    hosts[0].guests = [dc.parse_guest(hosts[0].uri, domain(n, c), False) for n, c in
                       guests.items()]
    for h in hosts:
        h.accepts = Verdict(True)
    last = [h for h in hosts if h.ok][-1]
    assert last.caps is not None
    f = b.Fleet(hosts, baseline_xml=dc.host_model_xml(last.caps),
                baseline_features=last.features, common_model="pentium3", moves=moves,
                time="2026-12-01T09:00:00Z", seconds=0.5)
    return f.as_json()


A, B = "qemu+ssh://root@h1/system", "qemu+ssh://root@h2/system"
HOME = dc.Move(True, "home")


def test_drift_host_lost_tsx_names_the_guests() -> None:
    before = fleet([host(A, "A", "A"), host(B, "B", "A")],
                   {"tsx@" + A: {A: HOME, B: dc.Move(True, "yes")},
                    "web@" + A: {A: HOME, B: dc.Move(True, "yes")}})
    lost = dc.move_from_verdict(no_tsx())
    after = fleet([host(A, "A", "A"), host(B, "B", "B-no-tsx")],
                  {"tsx@" + A: {A: HOME, B: lost}, "web@" + A: {A: HOME, B: dc.Move(True, "yes")}})
    changes = fd.drift(before, after)
    assert [c.text for c in changes if c.loss] == [
        f"host B ({B}) lost hle, rtm: guests tsx can no longer move to B",
        "the fleet baseline lost hle, rtm: guests defined with the saved one cannot move to"
        " every host"]
    assert fd.drift(before, before) == []
    after["domains"] = [d for d in after["domains"] if d["name"] != "web"]
    assert (f"guest web of host A ({A}) is no longer defined", False) in [
        (c.text, c.loss) for c in fd.drift(before, after)]
    text = fd.render(after, changes, "2026-12-01T09:00:00Z")
    assert "  tsx@A -> B: missing hle, rtm" in text
    assert f"  host B ({B}) lost hle, rtm: guests tsx can no longer move to B" in text
    assert len(text.splitlines()) <= 24, text  # one screen


def test_drift_vendor_and_hosts_coming_and_going() -> None:
    c = "qemu+ssh://root@h3/system"
    before = fleet([host(A, "A", "A"), host(c, "B", "A")], {})
    after = fleet([host(A, "A", "A"), host(c, "B", "C-amd")], {})
    texts = [d.text for d in fd.drift(before, after)]
    assert f"host B ({c}) changed CPU vendor from Intel to AMD: no guest is affected" in texts
    assert f"host B ({c}) can no longer run the named models pentium3" in texts
    gone = fleet([host(A, "A", "A")], {})
    assert [(d.text, d.loss) for d in fd.drift(before, gone)] == [
        (f"host {c} (then B) was not asked this time", False)]
    assert (f"host B ({c}) is new since the saved baseline", False) in [
        (d.text, d.loss) for d in fd.drift(gone, before)]
    down = fleet([host(A, "A", "A"), b.HostResult(c, "B", None, error="no answer within 5 s")],
                 {})  # type: ignore[arg-type]
    assert [(d.text, d.loss) for d in fd.drift(before, down)] == [
        (f"host B ({c}) answered then, not now (no answer within 5 s)", True)]


def test_render_reports_a_host_that_did_not_answer() -> None:
    result = fleet([host(A, "A", "A"), b.HostResult(B, "B", None,  # type: ignore[arg-type]
                                                    error=f"{B}: cannot connect: refused")],
                   {"tsx@" + A: {A: HOME, B: dc.Move(None, "no-answer", message="refused")},
                    "web@" + A: {A: HOME, B: dc.Move(None, "no-answer", message="refused")}})
    text = fd.render(result)
    assert f"  B  {B}  NO ANSWER: cannot connect: refused" in text
    assert "hosts: 1 of 2 answered" in text and "(?: the host did not answer)" in text


def test_parallel_reports_a_hung_host_and_keeps_the_others() -> None:
    never = threading.Event()

    def hang() -> str:
        never.wait(30)
        return "late"

    def refuse() -> str:
        raise LibvirtError("qemu+ssh://x/system: cannot connect: refused")

    start = time.monotonic()
    out = b.parallel({"ok": lambda: "fine", "hung": hang, "down": refuse},
                     time.monotonic() + 0.3, 0.3)
    assert time.monotonic() - start < 15  # long before the hung host's 30 s, even when loaded
    assert (out["ok"].value, out["ok"].error) == ("fine", None)
    assert out["hung"].error == "no answer within 0.3 s"
    assert out["down"].error == "qemu+ssh://x/system: cannot connect: refused"
    never.set()


def test_parallel_raises_a_bug() -> None:
    with pytest.raises(ZeroDivisionError):
        b.parallel({"bug": lambda: 1 // 0}, time.monotonic() + 5, 5)


def test_labels() -> None:
    assert b.labels(["x"] * 28)[:3] == ["A", "B", "C"]
    assert b.labels(["x"] * 28)[26:] == ["AA", "AB"]


@pytest.mark.parametrize("command", ["cpu-baseline", "cpu-check"])
def test_domain_takes_one_name_and_repeats(command: str) -> None:
    """--domain NAME once per domain: the words after it stay URIs (cpu-baseline)."""
    argv = [command, "--domain", "web1", "--domain", "db", "qemu:///system"]
    if command == "cpu-check":
        argv.pop()
    args = cli.build_parser().parse_args(argv)
    assert args.domain == ["web1", "db"]
    assert getattr(args, "uris", ["qemu:///system"]) == ["qemu:///system"]
    assert cli.build_parser().parse_args([command]).domain == []


def test_cli_refuses_a_bad_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cpu-baseline", "--timeout", "0", "test:///default"]) == 2
    assert "--timeout 0: expected a positive number" in capsys.readouterr().err


def test_cli_reports_an_unreachable_host(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("libvirt")
    uri = f"qemu+unix:///system?socket={tmp_path}/none"
    assert cli.main(["cpu-baseline", "--root", str(tmp_path), "--json", uri]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["hosts"][0]["uri"] == uri and not result["hosts"][0]["ok"]
    assert "cannot connect" in result["hosts"][0]["error"]
    assert result["baseline"]["cpu_xml"] is None


def test_a_big_fleet_shows_only_the_guests_that_cannot_move_everywhere() -> None:
    hosts = [host(A, "A", "A"), host(B, "B", "B-no-tsx")]
    result = fleet(hosts, {})
    guest = result["domains"][1]
    result["domains"] = [{**guest, "name": f"web{i:02d}",
                          "moves": {A: HOME.as_json(), B: dc.Move(True, "yes").as_json()}}
                         for i in range(40)]
    result["domains"][7]["moves"][B] = dc.move_from_verdict(no_tsx()).as_json()
    text = fd.render(result)
    assert "  web07@A  home   NO" in text and "web08@A" not in text
    assert "  (39 more guests can move to every host)" in text
    assert "  web07@A -> B: missing hle, rtm" in text
    assert len(text.splitlines()) <= 24, text
    assert result["hosts"][1]["unusable_models"]["Broadwell"] is None  # libvirt 9.0


def test_save_keeps_the_saved_entry_of_a_host_that_did_not_answer() -> None:
    from virtdeb.commands.cpu_baseline import carry_over

    before = fleet([host(A, "A", "A"), host(B, "B", "A")], {})
    now = fleet([host(A, "A", "A"), b.HostResult(B, "B", None,  # type: ignore[arg-type]
                                                 error="no answer within 20 s")], {})
    kept = carry_over(before, now)
    assert kept["hosts"][1]["ok"] and kept["hosts"][1]["features"] == before["hosts"][1][
        "features"]
    assert kept["hosts"][1]["carried_from"] == before["time"]
    assert carry_over(None, now)["hosts"][1]["ok"] is False
    # the run after: B answers again without TSX, and is compared with what it said first
    later = fleet([host(A, "A", "A"), host(B, "B", "B-no-tsx")], {})
    assert any(c.text.startswith(f"host B ({B}) lost hle, rtm") for c in fd.drift(kept, later))
