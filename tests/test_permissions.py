"""No file virtdeb writes gets a wider mode than it had, nor another owner.

On the fake root of real Debian conffiles (tests/harness/faults.py), every file that
some registered rule changes is first given an unusual owner and a narrow mode;
after the apply (and after the revert) each has the same owner and mode.  New
files get 0644 or narrower; journal entries 0600 in a 0700 directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.harness import faults as fl
from virtdeb.host import Host
from virtdeb.journal import Journal

UID = GID = 1234


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o644])
def test_owner_and_mode_kept(tmp_path: Path, mode: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    root = fl.build_root(tmp_path / "root")
    plan = fl.file_changes(root)
    existing = sorted({c.target for c in plan.changes if c.before is not None})
    created = sorted({c.target for c in plan.changes if c.before is None})
    assert existing, "no rule changes an existing file: nothing to check"
    for target in existing:
        os.chown(root / target.lstrip("/"), UID, GID)
        os.chmod(root / target.lstrip("/"), mode)
    host = Host(root=root, uri=fl.URI)
    entry = Journal(host).apply(fl.file_changes(root).changes, "permissions")
    assert entry is not None
    for target in existing:
        real = root / target.lstrip("/")
        st = os.lstat(real)
        assert (st.st_uid, st.st_gid) == (UID, GID), f"{target}: owner changed"
        assert _mode(real) == mode, f"{target}: mode {oct(_mode(real))}, was {oct(mode)}"
    for target in created:
        real = root / target.lstrip("/")
        assert _mode(real) & ~0o644 == 0, f"{target}: new file mode {oct(_mode(real))} > 0644"
        assert os.lstat(real).st_uid == 0
    journal = root / "var/lib/virtdeb/journal"
    assert _mode(journal) & ~0o700 == 0, f"journal directory mode {oct(_mode(journal))}"
    for entry_file in journal.glob("*.json"):
        assert _mode(entry_file) == 0o600, f"{entry_file.name}: {oct(_mode(entry_file))}"
    Journal(host).revert()
    for target in existing:
        real = root / target.lstrip("/")
        st = os.lstat(real)
        assert (st.st_uid, st.st_gid, _mode(real)) == (UID, GID, mode), f"{target} after revert"
    for entry_file in journal.glob("*.json"):
        assert _mode(entry_file) == 0o600


def test_umask_does_not_widen_new_files(tmp_path: Path) -> None:
    """A permissive umask (0) must not give new files more than 0644."""
    root = fl.build_root(tmp_path / "root")
    old = os.umask(0)
    try:
        fl.apply_files(root)
    finally:
        os.umask(old)
    plan_targets = [p for p in (root / "var/lib/virtdeb").rglob("*") if p.is_file()]
    plan_targets += [p for p in (root / "etc").rglob("*") if p.is_file()]
    for path in plan_targets:
        assert _mode(path) & 0o022 == 0 or path.name in ("shadow",), \
            f"{path}: group/other writable ({oct(_mode(path))})"
    for directory in (root / "var/lib/virtdeb").rglob("*"):
        if directory.is_dir():
            assert _mode(directory) & 0o022 == 0, f"{directory}: {oct(_mode(directory))}"
