"""cpu-check's text report groups domains sharing one CPU definition (virtdeb/cpu/report.py).

The reports are the engine's real DomainReport objects, built from domain XML and a
Verdict as cpu-check builds them (the comparison itself is tested against a real libvirtd
in tests/test_cpucheck.py, where the grouped text is checked end to end too).
"""

from __future__ import annotations

import os
import select
from pathlib import Path

from virtdeb.cpu.compare import DomainReport, Progress, Verdict
from virtdeb.cpu.report import groups, names, text_lines
from virtdeb.cpu.xml import fragility, parse_domain

TSX_CPU = ("<cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model>"
           "<vendor>AMD</vendor><feature policy='require' name='hle'/>"
           "<feature policy='require' name='rtm'/></cpu>")
# the same definition, written differently (attribute order, spacing, feature order)
TSX_CPU_REORDERED = ("<cpu match='exact' mode='custom'>\n  <model fallback='forbid'>EPYC</model>"
                     "\n  <vendor>AMD</vendor>\n  <feature name='rtm' policy='require'/>"
                     "\n  <feature name='hle' policy='require'/>\n</cpu>")
FIT_CPU = "<cpu mode='custom' match='minimum'><model fallback='allow'>qemu64</model></cpu>"
BROKEN = Verdict(False, ("hle", "rtm"), None, "missing features: hle, rtm")
FITS = Verdict(True)


def report(name: str, cpu: str, verdict: Verdict | None,
           active: bool = False) -> DomainReport:
    xml = (f"<domain type='kvm'><name>{name}</name><os><type arch='x86_64'>hvm</type></os>"
           f"{cpu}</domain>")
    dom = parse_domain(xml)
    return DomainReport(dom, active, verdict, fragility(dom.cpu))


def test_forty_clones_are_one_line() -> None:
    reports = [report(f"web{i:02d}", TSX_CPU if i % 2 else TSX_CPU_REORDERED, BROKEN,
                      active=i in (3, 7)) for i in range(1, 41)]
    reports += [report("db", FIT_CPU, FITS), report("plain", "", None)]
    lines = text_lines(reports)
    assert lines == [
        "web01, web02, web03, web04 and 36 more (40 domains, 2 running, EPYC (AMD)):"
        " INCOMPATIBLE: missing features: hle, rtm [fragile: fallback=forbid, match=exact]",
        "db (shut off, qemu64): compatible",
    ]


def test_a_group_of_one_reads_as_before() -> None:
    r = report("tsx", TSX_CPU, BROKEN)
    assert text_lines([r]) == [r.line()]
    assert text_lines([r])[0].startswith("tsx (shut off, EPYC (AMD)): INCOMPATIBLE")


def test_different_verdicts_or_definitions_are_different_lines() -> None:
    a = report("a", TSX_CPU, BROKEN)
    b = report("b", TSX_CPU, FITS)  # same XML, another verdict (another emulator, say)
    c = report("c", FIT_CPU, FITS)
    assert [len(g) for g in groups([c, b, a])] == [1, 1, 1]
    assert [g[0].dom.name for g in groups([c, b, a])] == ["a", "b", "c"]  # broken first


def test_names_abbreviated_past_a_few() -> None:
    five = [report(n, FIT_CPU, FITS) for n in "abcde"]
    assert names(five) == "a, b, c, d, e"  # "and 1 more" would save nothing
    assert names([*five, report("f", FIT_CPU, FITS)]) == "a, b, c, d and 2 more"
    all_running = [report(n, FIT_CPU, FITS, active=True) for n in "xy"]
    assert text_lines(all_running) == ["x, y (2 domains, running, qemu64): compatible"]


def test_progress_only_on_a_terminal_and_only_for_long_runs(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            p = Progress(tty, "comparing CPUs", minimum=50)
            p(1, 10)  # a short run: nothing
            for i in range(1, 61):
                p(i, 60)
            p.done()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:  # everything written, in pieces
            chunks.append(os.read(master, 65536))
        shown = b"".join(chunks).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "virtdeb: comparing CPUs 60/60" in shown and "/10" not in shown
    assert shown.endswith("\r\033[K")  # the line is wiped at the end
    with open(tmp_path / "out", "w") as pipe_like:  # not a terminal: never a progress line
        q = Progress(pipe_like, "comparing CPUs", minimum=1)
        for i in range(1, 61):
            q(i, 60)
        q.done()
    assert (tmp_path / "out").read_text() == ""
