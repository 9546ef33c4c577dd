#!/usr/bin/python3
"""Benchmark: the apt hook on an irrelevant transaction vs a bare ``python3 -c pass``.

Runs hooks/apt-hook the way apt does (``/usr/bin/python3 /path/apt-hook``, the v3
stream of a 400-package upgrade on APT_HOOK_INFO_FD), RUNS times each, and
prints the median wall times and their ratio (goal <= 1.1x).  The package's
modules are byte-compiled first, as dh_python3 does on install.
Run: /usr/bin/python3 bench/apthook.py [RUNS]
"""

from __future__ import annotations

import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ratio

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "hooks/apt-hook"


def stream(packages: int = 400) -> bytes:
    lines = ["VERSION 3", "APT::Architecture=amd64", "Dir=/", ""]
    for i in range(packages):
        lines.append(f"libfoo{i} 1.{i}-1 amd64 same < 1.{i}-2 amd64 same"
                     f" /var/cache/apt/archives/libfoo{i}_1.{i}-2_amd64.deb")
    lines += [f"libfoo{i} 1.{i}-1 amd64 same < 1.{i}-2 amd64 same **CONFIGURE**"
              for i in range(packages)]
    return ("\n".join(lines) + "\n").encode()


def timed(commands: list[tuple[list[str], bytes]], runs: int) -> list[float]:
    """Median wall time of each command; the commands alternate run by run (fair on noise)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT)}
    times: list[list[float]] = [[] for _ in commands]
    with tempfile.TemporaryFile() as fh:
        for _ in range(runs):
            for i, (argv, data) in enumerate(commands):
                fh.seek(0)
                fh.truncate()
                fh.write(data)
                fh.seek(0)
                env["APT_HOOK_INFO_FD"] = str(fh.fileno())
                t0 = time.perf_counter()
                proc = subprocess.run(argv, env=env, pass_fds=(fh.fileno(),),
                                      capture_output=True, check=False)
                times[i].append(time.perf_counter() - t0)
                if proc.returncode != 0 or proc.stderr:
                    raise SystemExit(f"{argv}: exit {proc.returncode}: {proc.stderr!r}")
    return [statistics.median(t) for t in times]


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    if not HOOK.exists():
        print(f"{HOOK} is missing (written by the packaging)", file=sys.stderr)
        return 1
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_file(str(ROOT / "virtdeb/__init__.py"), quiet=1)
    compileall.compile_file(str(ROOT / "virtdeb/apthook.py"), quiet=1)
    data = stream()
    commands = [(["/usr/bin/python3", "-c", "pass"], b""),
                (["/usr/bin/python3", str(HOOK)], data)]
    timed(commands, 3)  # warm the page cache
    bare, hook = timed(commands, runs)
    print(f"bare /usr/bin/python3 -c pass: {bare * 1000:.1f} ms (median of {runs})")
    print(f"apt hook, irrelevant {len(data)} byte transaction: {hook * 1000:.1f} ms"
          f" (median of {runs})")
    print(ratio("apt hook no-op / bare python3", hook / bare, "<= 1.1x",
                f"{hook * 1000:.1f} ms vs {bare * 1000:.1f} ms, medians of {runs} paired runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
