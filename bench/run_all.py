#!/usr/bin/python3
"""Every benchmark in bench/, one after the other (`make bench`); each prints its ratios,
and the headline ratios (lines starting with RATIO) are repeated together at the end:
doctor against virt-host-validate, the apt hook's no-op path against a bare python3,
and the admin's virsh loop against cpu-check at 1,000 domains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import ENV, PY, RATIO

HERE = Path(__file__).resolve().parent
NOT_BENCHES = {"common.py", "run_all.py"}


def main() -> int:
    failed = 0
    ratios: list[str] = []
    for bench in sorted(HERE.glob("*.py")):
        if bench.name in NOT_BENCHES:
            continue
        print(f"== {bench.name}", flush=True)
        proc = subprocess.Popen([PY, str(bench)], cwd=HERE, env=ENV, text=True,
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        for line in proc.stdout:  # shown as it comes: some benchmarks take minutes
            print(line, end="", flush=True)
            if line.startswith(RATIO):
                ratios.append(line.rstrip("\n"))
        if proc.wait() != 0:
            print(f"== {bench.name}: exit {proc.returncode}", flush=True)
            failed += 1
    print("== the headline ratios (whole processes, measured in this run)")
    print("\n".join(ratios) if ratios else "none measured")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
