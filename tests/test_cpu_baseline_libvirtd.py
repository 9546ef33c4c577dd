"""``virtdeb cpu-baseline`` over several real private libvirtds, each a "host" in its
own network and mount namespaces (tests/harness/libvirtd.py).

All of them share one physical CPU, so nothing here names a CPU model or feature
of this machine: the features a test guest lacks are picked from what the hosts
report.  A host that "lost" features is a real libvirtd started with libvirt's
qemu capabilities cache edited (those features switched off in its probed host
CPU): what libvirt believes after re-probing a CPU whose microcode took them
away.  The URIs stay the same across a restart (a symlink to the socket), as a
host's URI does across a reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import cpucaps
from tests.harness.libvirtd import CAPS_SUBDIR, PrivateLibvirtd, skip_reason
from tests.harness.procs import PATH
from virtdeb import lock
from virtdeb.cpu import baseline as b
from virtdeb.cpu import domcaps as dc
from virtdeb.cpu import fleet_host as fh
from virtdeb.cpu import microcode
from virtdeb.host import Host as VHost
from virtdeb.rules import Status
from virtdeb.rules.cpu import Cpu

libvirt = pytest.importorskip("libvirt")
pytestmark = pytest.mark.integration  # real daemons; the source tree's virtdeb

TOP = Path(__file__).resolve().parents[1]
FAIL_INCOMPATIBLE = 1


def domain_xml(name: str, cpu: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}</domain>")


class Host:
    """A private libvirtd behind a stable socket path (the URI survives a restart)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.uri = f"qemu+unix:///system?socket={link}"
        self.daemon: PrivateLibvirtd | None = None

    def start(self, caps_cache: str | None = None) -> None:
        with cpucaps.one_core():  # the qemu capabilities cache holds a per-core CPUID
            self.daemon = PrivateLibvirtd(caps_cache=caps_cache).start()
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(self.daemon.socket)
        # a fresh daemon's first domain capabilities take seconds (a running host has
        # them at hand): ask once, so that the tests' short deadlines measure the tool
        conn = self.connect()
        try:
            conn.getDomainCapabilities(None, None, None, None, 0)
        finally:
            conn.close()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None

    def connect(self) -> Any:
        return libvirt.open(self.uri)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    made = [Host(tmp_path / f"host{i}.sock") for i in range(3)]
    try:
        for h in made:
            h.start()
        yield made
    finally:  # in parallel: each stop waits for init to reap its daemon's children
        stoppers = [threading.Thread(target=h.stop) for h in made]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        left = [h for h in made if h.daemon is not None]
        for h in left:
            h.stop()  # raises what went wrong


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["/usr/bin/python3", "-m", "virtdeb", "cpu-baseline", "--root",
                           str(root), *args], cwd=TOP, capture_output=True, text=True,
                          env={"PATH": PATH, "LC_ALL": "C.UTF-8", "PYTHONPATH": str(TOP)},
                          timeout=120, check=False)
    return proc


def show(proc: subprocess.CompletedProcess[str]) -> None:
    print(f"$ virtdeb cpu-baseline ... (exit {proc.returncode})")
    print(proc.stdout + proc.stderr)


def test_three_hosts_baseline_matrix_and_a_host_that_never_answers(
        hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = hosts
    conn = a.connect()
    lacking = cpucaps.lacking(conn)
    conn.defineXML(domain_xml("fits", cpucaps.host_model_cpu(conn)))
    conn.defineXML(domain_xml("needs-more", cpucaps.host_model_cpu(conn, lacking)))
    conn.close()
    conn = b.connect()
    conn.defineXML(domain_xml("adapts", "<cpu mode='host-model'/>"))
    conn.close()
    # a "host" that accepts the connection and never answers
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(tmp_path / "mute.sock"))
    mute.listen(8)
    mute_uri = f"qemu+unix:///system?socket={tmp_path / 'mute.sock'}"
    try:
        start = time.monotonic()
        proc = run(tmp_path, "--timeout", "4", "--json", a.uri, b.uri, c.uri, mute_uri)
        took = time.monotonic() - start
        proc_text = run(tmp_path, "--timeout", "4", a.uri, b.uri, c.uri, mute_uri)
    finally:
        mute.close()
    show(proc_text)
    assert proc.returncode == 1, proc.stderr  # one host did not answer
    assert took < 15
    result = json.loads(proc.stdout)
    by_uri = {h["uri"]: h for h in result["hosts"]}
    assert list(by_uri) == [a.uri, b.uri, c.uri, mute_uri]  # named by the URI given
    assert [by_uri[h.uri]["ok"] for h in hosts] == [True, True, True]
    assert by_uri[mute_uri]["error"] == "no answer within 4 s"
    assert "D  " + mute_uri in proc_text.stdout and "NO ANSWER: no answer within 4 s" in \
        proc_text.stdout

    # the baseline: each host itself accepts it (>= 1), and it defines as a guest's CPU
    cpu_xml = result["baseline"]["cpu_xml"]
    assert cpu_xml.startswith("<cpu mode='custom'")
    assert sorted(result["baseline"]["accepted_by"]) == sorted(h.uri for h in hosts)
    for h in hosts:
        conn = h.connect()
        assert conn.compareHypervisorCPU(None, "x86_64", None, "kvm", cpu_xml,
                                         FAIL_INCOMPATIBLE) >= 1
        conn.close()
    conn = c.connect()
    conn.defineXML(domain_xml("on-baseline", cpu_xml))
    conn.close()
    assert result["named_model"]["common"]["model"]

    # the matrix names every guest of every host; the one needing more cannot move
    moves = {(d["name"], d["host"]): d["moves"] for d in result["domains"]}
    assert set(moves) == {("fits", a.uri), ("needs-more", a.uri), ("adapts", b.uri)}
    for target in (b.uri, c.uri):
        assert moves[("fits", a.uri)][target]["state"] == "yes"
        bad = moves[("needs-more", a.uri)][target]
        assert (bad["can"], sorted(bad["missing"])) == (False, sorted(lacking))
        assert moves[("needs-more", a.uri)][mute_uri]["state"] == "no-answer"
    assert moves[("adapts", b.uri)][a.uri]["state"] == "adapts"
    assert f"needs-more@A -> B: missing {', '.join(lacking)}" in proc_text.stdout \
        or "needs-more@A -> B: missing" in proc_text.stdout

    proc = run(tmp_path, "--json", "--domain", "fits", a.uri, b.uri, c.uri)
    assert [d["name"] for d in json.loads(proc.stdout)["domains"]] == ["fits"]
    proc = run(tmp_path, "--json", a.uri, b.uri, c.uri)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    on_baseline = next(d for d in result["domains"] if d["name"] == "on-baseline")
    assert [m["can"] for m in on_baseline["moves"].values()] == [True, True, True]


def edited_caps_cache(daemon: PrivateLibvirtd, features: list[str], into: Path) -> str:
    """A copy of ``daemon``'s qemu capabilities cache whose probed KVM host CPU lacks
    ``features`` (as after a microcode update that removed them)."""
    into.mkdir()
    edited = 0
    for f in (daemon.scratch / CAPS_SUBDIR).glob("*.xml"):
        text = f.read_text()
        head, sep, rest = text.partition("<hostCPU type='kvm'")
        body, end, tail = rest.partition("</hostCPU>")
        for name in features:
            body, n = re.subn(rf"(<property name='{re.escape(name)}' type='boolean'"
                              r" value=)'true'", r"\1'false'", body)
            edited += n
        (into / f.name).write_text(head + sep + body + end + tail)
        os.chmod(into / f.name, 0o600)
    assert edited >= len(features), "the qemu capabilities cache has no such host CPU property"
    return str(into)


def test_save_then_a_host_that_lost_features_reports_the_drift(
        hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = hosts
    conn = a.connect()
    have = cpucaps.expanded_features(conn)
    cache = (a.daemon.scratch / CAPS_SUBDIR) if a.daemon else None
    probed = "".join(p.read_text() for p in cache.glob("*.xml")) if cache else ""
    # two features this host has and libvirt probed from qemu (the first by name)
    lose = sorted(f for f in have & cpucaps.known_features()
                  if f"<property name='{f}' type='boolean' value='true'" in probed)[:2]
    assert len(lose) == 2, f"no two features to take away: {sorted(have)}"
    conn.defineXML(domain_xml("pinned", cpucaps.host_model_cpu(conn)))  # needs every feature of A
    conn.defineXML(domain_xml("small", "<cpu mode='custom' match='exact'>"
                              "<model>pentium2</model></cpu>"))
    conn.close()
    proc = run(tmp_path, "--save", a.uri, b.uri, c.uri)
    show(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = tmp_path / "var/lib/virtdeb/cpu/fleet.json"
    assert json.loads(saved.read_text())["baseline"]["cpu_xml"]
    assert oct(saved.stat().st_mode & 0o777) == "0o644"
    entry = re.search(r"journal entry (\S+); undo with: virtdeb revert \1", proc.stdout)
    assert entry, proc.stdout

    # host B comes back with the features gone
    assert b.daemon is not None
    edited = edited_caps_cache(b.daemon, lose, tmp_path / "caps-B")
    b.stop()
    b.start(caps_cache=edited)
    conn = b.connect()
    assert not set(lose) & cpucaps.expanded_features(conn), \
        "libvirt probed qemu instead of the edited cache"
    conn.close()
    proc = run(tmp_path, a.uri, b.uri, c.uri)
    show(proc)
    assert proc.returncode == 1
    assert (f"host B ({b.uri}) lost {', '.join(sorted(lose))}: guests pinned can no longer"
            " move to B") in proc.stdout
    assert f"pinned@A -> B: missing {', '.join(lose)}" in proc.stdout or \
        re.search(r"pinned@A -> B: missing .*" + re.escape(lose[0]), proc.stdout)
    assert "the fleet baseline lost" in proc.stdout
    result = json.loads(run(tmp_path, "--json", a.uri, b.uri, c.uri).stdout)
    # the new baseline is still accepted by every host, the smaller one included
    assert sorted(result["baseline"]["accepted_by"]) == sorted(h.uri for h in hosts)
    assert any(ch["loss"] for ch in result["since_saved"]["changes"])

    # on host B itself: the microcode trigger's check and rule cpu use the saved baseline
    on_b = VHost(root=tmp_path, uri=b.uri)
    try:
        checked = microcode.check_and_report(on_b, "microcode-update", fix=False)
        assert checked is not None and checked.report["fleet"] is not None
        report = checked.report
        problems = report["fleet"]["problems"]
        print("\n".join(problems))
        assert "this host no longer gives the fleet's CPU baseline saved" in problems[0]
        assert all(f in problems[0] for f in lose)
        assert "pinned@" + a.uri in problems[1]
        fails = [f for f in Cpu(on_b).check() if f.status is Status.FAIL]
        assert [f.message for f in fails] == problems
    finally:
        on_b.close()
    on_a = VHost(root=tmp_path, uri=a.uri)
    try:  # host A still gives it (the saved guests' CPUs too)
        assert microcode.fleet_check(on_a) == {**microcode.fleet_check(on_a),  # type: ignore
                                               "baseline_accepted": True, "problems": []}
    finally:
        on_a.close()
    # the save was journaled like every file virtdeb writes: revert takes it back
    undo = subprocess.run(["/usr/bin/python3", "-m", "virtdeb", "revert", "--root",
                           str(tmp_path), entry.group(1)], cwd=TOP, capture_output=True,
                          text=True, env={"PATH": PATH, "PYTHONPATH": str(TOP)}, check=False)
    assert undo.returncode == 0, undo.stderr
    assert not saved.exists()
    shutil.rmtree(tmp_path / "caps-B", ignore_errors=True)


def test_hosts_of_two_vendors_get_a_baseline_without_vendor(libvirtd: PrivateLibvirtd) -> None:
    """Host C is this daemon's own domain capabilities with the vendor edited to another
    one; the real libvirt computes the baseline, which names no vendor and which the real
    host accepts."""
    live = fh.LibvirtHost(libvirtd.uri)
    live.open()
    try:
        xml = live.domain_capabilities()
        mine = dc.parse_domcaps(xml)
        other = "AMD" if mine.vendor != "AMD" else "Intel"
        edited = dc.parse_domcaps(xml.replace(f"<vendor>{mine.vendor}</vendor>",
                                             f"<vendor>{other}</vendor>", 1))
        assert edited.vendor == other
        hosts = [b.HostResult("qemu+ssh://a/system", "A", live, version="9.0.0", caps=mine),
                 b.HostResult("qemu+ssh://c/system", "C", live, version="9.0.0", caps=edited)]
        fleet = b.Fleet(hosts)
        b.fleet_baseline(fleet, hosts, 10)
        assert fleet.baseline_error is None and fleet.baseline_xml
        assert ET.fromstring(fleet.baseline_xml).find("vendor") is None
        assert fleet.baseline_note.startswith("hosts of different CPU vendors (")
        assert live.conn.compareHypervisorCPU(None, mine.arch, None, mine.virttype,
                                              fleet.baseline_xml, FAIL_INCOMPATIBLE) >= 1
        assert fleet.common_model in mine.usable()
    finally:
        live.close()


def test_a_host_that_goes_away_between_the_rounds_is_not_a_cannot_move(
        hosts: list[Host]) -> None:
    a, _b, c = hosts
    conn = a.connect()
    conn.defineXML(domain_xml("fits", cpucaps.host_model_cpu(conn)))
    conn.close()

    class StopsC(fh.LibvirtHost):
        def baseline(self, cpu_xmls: Any, arch: str, virttype: str) -> str:
            c.stop()  # between the first round and the comparisons
            return super().baseline(cpu_xmls, arch, virttype)

    fleet = b.survey([h.uri for h in hosts], timeout=10,
                     opener=lambda uri: StopsC(uri) if uri == a.uri else fh.LibvirtHost(uri))
    try:
        result = fleet.as_json()
    finally:
        b.close(fleet)
    by_uri = {h["uri"]: h for h in result["hosts"]}
    assert "compareHypervisorCPU" in by_uri[c.uri]["error"]
    fits = next(d for d in result["domains"] if d["name"] == "fits")
    assert fits["moves"][c.uri]["state"] == "no-answer" and fits["moves"][c.uri]["can"] is None
    assert fits["moves"][hosts[1].uri]["state"] == "yes"


def test_save_while_another_virtdeb_holds_the_lock_is_busy_and_saves_nothing(
        hosts: list[Host], tmp_path: Path) -> None:
    a = hosts[0]
    with lock.hold(VHost(root=tmp_path).path(lock.LOCK), "test holder"):
        proc = run(tmp_path, "--save", "--wait", "0.3", a.uri)
        show(proc)
        assert proc.returncode == lock.BUSY_EXIT, proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(
            f"virtdeb: busy: pid {os.getpid()} (test holder) still holds {lock.LOCK} after 0.3 s;")
    assert not (tmp_path / "var/lib/virtdeb/cpu/fleet.json").exists()
    assert not (tmp_path / "var/lib/virtdeb/journal").exists()
    proc = run(tmp_path, "--save", "--wait", "0.3", a.uri)  # the lock is free again
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "var/lib/virtdeb/cpu/fleet.json").exists()
