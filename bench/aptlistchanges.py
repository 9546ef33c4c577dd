#!/usr/bin/python3
"""The apt hook's no-op path vs `apt-listchanges --apt`, and vs `python3 -c pass`.

(bench/apthook.py times the hook on a 400-package stream against python3 -c pass.)

Each program gets an equivalent stream on descriptor 20 (APT_HOOK_INFO_FD=20),
as APT sends it: one unrelated package to install (a real small .deb built
here), protocol 3 for virtdeb's hook (hooks/apt-hook with this tree on
PYTHONPATH), protocol 2 for apt-listchanges (its own apt.conf.d setting), run
with `--frontend=none`.  Goals: hook/python3 <= 1.5x; the hook well under
apt-listchanges.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ENV, PY, TOP, best, ratio_line, runs

from tests.harness.faults import tiny_deb

HOOK = TOP / "hooks" / "apt-hook"


def on_fd20(argv: list[str], stream: bytes, env: dict[str, str]) -> None:
    """Run argv with ``stream`` readable on descriptor 20, as APT does."""
    rfd, wfd = os.pipe()
    os.write(wfd, stream)  # small: fits in the pipe buffer
    os.close(wfd)
    os.dup2(rfd, 20)
    os.close(rfd)
    try:
        proc = subprocess.run(argv, env={**env, "APT_HOOK_INFO_FD": "20"}, pass_fds=(20,),
                              capture_output=True, check=False)
    finally:
        os.close(20)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]}: exit {proc.returncode}: {proc.stderr.decode()[-400:]}")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        deb = tiny_deb(Path(tmp), "vdbench")
        conf = "APT::Architecture=amd64\nDir=/\n\n"
        v3 = f"VERSION 3\n{conf}vdbench - - none < 1.0 all none {deb}\n".encode()
        v2 = f"VERSION 2\n{conf}vdbench - < 1.0 {deb}\n".encode()
        n = runs() * 3
        t_hook = best(lambda: on_fd20([str(HOOK)], v3, ENV), n)
        t_py = best(lambda: on_fd20([PY, "-c", "pass"], v3, ENV), n)
        print(ratio_line("apthook", "virtdeb apt-hook (no-op path)", t_hook,
                         "python3 -c pass", t_py, "subject/anchor <= 1.5x"))
        alc = shutil.which("apt-listchanges", path=ENV["PATH"])
        if alc is None:
            print("apthook: apt-listchanges is not installed (make deps installs it): skipped")
            return 0
        t_alc = best(lambda: on_fd20([alc, "--apt", "--frontend=none"], v2, ENV), n)
        print(ratio_line("apthook", "virtdeb apt-hook (no-op path)", t_hook,
                         "apt-listchanges --apt", t_alc, "anchor/subject > 1x"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
