"""Shared helpers of the benchmarks: timing a command, a fake root, a ratio line."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
if str(TOP) not in sys.path:
    sys.path.insert(0, str(TOP))

PY = "/usr/bin/python3"
from tests.harness.procs import PATH  # noqa: E402  (after TOP joins sys.path)

ENV = {"PATH": PATH,
       "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root",
       "PYTHONPATH": str(TOP)}


def best(fn: Callable[[], object], runs: int) -> float:
    """The best wall time of ``runs`` calls, in seconds (the least disturbed run)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def command(argv: Sequence[str], *, stdin: bytes | None = None,
            env: dict[str, str] | None = None, ok: Sequence[int] = (0,)) -> Callable[[], None]:
    def run() -> None:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True,
                              env=env or ENV, check=False)
        if proc.returncode not in ok:
            raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}:"
                             f" {proc.stderr.decode(errors='replace')[-400:]}")
    return run


def ratio_line(name: str, subject: str, t_subject: float, anchor: str, t_anchor: float,
               goal: str) -> str:
    return (f"{name}: {subject} {t_subject * 1000:.1f} ms; {anchor} {t_anchor * 1000:.1f} ms;"
            f" ratio anchor/subject {t_anchor / t_subject:.2f}x"
            f" (subject/anchor {t_subject / t_anchor:.2f}x); goal {goal}")


def runs() -> int:
    return int(os.environ.get("BENCH_RUNS", "7"))


def paired_medians(commands: Sequence[Sequence[str]], runs: int,
                   env: dict[str, str] | None = None) -> list[float]:
    """The median wall time of each whole process, the commands taking turns run by run
    (so that a burst of load on a shared machine hits them alike)."""
    times: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for i, argv in enumerate(commands):
            start = time.perf_counter()
            subprocess.run(list(argv), capture_output=True, env=env or ENV, check=False)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


RATIO = "RATIO"  # run_all.py repeats the lines that start with it at the end


def ratio(name: str, value: float, goal: str, detail: str) -> str:
    """The one line of a headline ratio: ``RATIO name: value (goal ...; detail)``."""
    return f"{RATIO} {name}: {value:.2f}x (goal {goal}; {detail})"
