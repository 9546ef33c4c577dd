#!/usr/bin/python3
"""`virtdeb doctor` over the file rules vs one `augtool -r ROOT print /files` (default load).

Both on the same root of real Debian conffiles (tests/faultlib.py).  The file
rules are the registered rules whose plan changes a file on that root.  Two
numbers: the whole `virtdeb doctor` process (interpreter start included), and
the checks alone inside one process after the imports (what a long-running
caller pays).  Goal: doctor at least 10 times faster than augtool's full load.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import PY, best, command, ratio_line, runs

from tests import faultlib as fl


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = fl.build_root(Path(tmp) / "root")
        rules = fl.file_changes(root).rules()
        print(f"doctor: root of real conffiles, file rules: {' '.join(rules)}")
        doctor = [PY, "-m", "virtdeb", "doctor", "--root", str(root), "-c", fl.URI, *rules]
        t_doctor = best(command(doctor, ok=(0, 1)), runs())
        t_aug = best(command(["augtool", "-r", str(root), "print", "/files"]), max(3, runs() // 2))
        print(ratio_line("doctor", "virtdeb doctor (process)", t_doctor,
                         "augtool print /files", t_aug, ">= 10x"))
        t_checks = best(lambda: _checks(root, rules), runs())
        print(ratio_line("doctor", "doctor checks (in process)", t_checks,
                         "augtool print /files", t_aug, ">= 10x"))
    return 0


def _checks(root: Path, rules: list[str]) -> None:
    from virtdeb.host import Host
    from virtdeb.rules import select

    host = Host(root=root, uri=fl.URI)
    for rule in select(rules):
        rule(host).check()
    host.close()


if __name__ == "__main__":
    sys.exit(main())
