#!/usr/bin/python3
"""Every benchmark in bench/, one after the other (`make bench`); each prints its ratios."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import ENV, PY

HERE = Path(__file__).resolve().parent
NOT_BENCHES = {"common.py", "run_all.py"}


def main() -> int:
    failed = 0
    for bench in sorted(HERE.glob("*.py")):
        if bench.name in NOT_BENCHES:
            continue
        print(f"== {bench.name}", flush=True)
        proc = subprocess.run([PY, str(bench)], cwd=HERE, env=ENV, check=False)
        if proc.returncode != 0:
            print(f"== {bench.name}: exit {proc.returncode}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
