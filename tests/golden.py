"""Golden cases: tests/cases/RULE/CASE/{in,out}/ are fake roots before and after.

An optional ``settings`` file in CASE holds ``section.key=value`` lines for the
run.  ``out`` is compared with the root after apply, ignoring the journal.
``findings`` holds what ``virtdeb doctor RULE`` says on ``in`` (lines ``before
STATUS message``) and after the apply (``after STATUS message``), as
lintian-brush's cases carry their message.  ``VIRTDEB_GOLDEN_UPDATE=1`` writes it
from what the rule says now (review the diff before committing it).
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


def findings_text(before: list[str], after: list[str]) -> str:
    return "".join(f"before {line}\n" for line in before) + \
        "".join(f"after {line}\n" for line in after)


def make_root(case: Path, tmp: Path) -> Path:
    root = tmp / "root"
    shutil.copytree(case / "in", root, symlinks=True)
    return root
