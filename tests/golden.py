"""Golden cases: tests/cases/RULE/CASE/{in,out}/ are fake roots before and after.

An optional ``settings`` file in CASE holds ``section.key=value`` lines for the
run.  ``out`` is compared with the root after apply, ignoring the journal.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CASES = Path(__file__).parent / "cases"
IGNORED = ("var/lib/virtdeb/journal", "var/lib/virtdeb/lock")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under root, by relative path."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == i or rel.startswith(i + "/") for i in IGNORED):
            continue
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out


def cases() -> list[tuple[str, str]]:
    return sorted((d.parent.name, d.name) for d in CASES.glob("*/*") if (d / "in").is_dir())


def settings(case: Path) -> dict[str, str]:
    file = case / "settings"
    if not file.exists():
        return {}
    pairs = [line.split("=", 1) for line in file.read_text().splitlines() if "=" in line]
    return {k.strip(): v.strip() for k, v in pairs}


def make_root(case: Path, tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(case / "in", root, symlinks=True)
    return root
