"""debian/postrm purge, the real script run by ``sh`` with ``DPKG_ROOT`` on a fake root
after real ``virtdeb acl`` and ``virtdeb apply`` runs (the booted story's step h purges
the installed package: tests/test_booted.py).

The polkit access driver virtdeb set in libvirtd.conf (with consent) works only with
virtdeb's rules file, which purge removes: purge puts that one line back as it was.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_acl import fake_root
from virtdeb.cli import main
from virtdeb.commands.acl import RULES_FILE
from virtdeb.edit import PURGE_UNDO_DIR

# the source tree's script (autopkgtest's unit test runs tests/ without it: integration)
pytestmark = pytest.mark.integration
POSTRM = Path(__file__).parent.parent / "debian/postrm"
CONF = "etc/libvirt/libvirtd.conf"
CONSENT = ["--set", "virtdeb.allow_edit=libvirtd.conf"]


def purge(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(POSTRM), "purge"], env={"DPKG_ROOT": str(root),
                          "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                          capture_output=True, text=True, check=True)


def granted_root(tmp_path: Path) -> tuple[Path, bytes]:
    root = fake_root(tmp_path)
    conf = (root / CONF).read_bytes()
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root), *CONSENT]) == 0
    assert b'access_drivers = [ "polkit"]' in (root / CONF).read_bytes()
    return root, conf


def test_purge_puts_the_access_driver_line_back(tmp_path: Path) -> None:
    root, conf = granted_root(tmp_path)
    (root / CONF).chmod(0o600)
    res = purge(root)
    assert (root / CONF).read_bytes() == conf
    assert (root / CONF).stat().st_mode & 0o777 == 0o600
    assert "libvirtd.conf: put back as it was" in res.stdout
    assert not (root / RULES_FILE.lstrip("/")).exists()
    assert not (root / "var/lib/virtdeb").exists()
    assert [p.name for p in (root / "etc/libvirt").iterdir()] == ["libvirtd.conf"]


def test_purge_keeps_the_administrators_other_edits(tmp_path: Path) -> None:
    root, conf = granted_root(tmp_path)
    with (root / CONF).open("a") as f:
        f.write("max_clients = 7\n")
    purge(root)
    assert (root / CONF).read_bytes() == conf + b"max_clients = 7\n"


def test_purge_leaves_a_line_the_administrator_changed(tmp_path: Path) -> None:
    root, _ = granted_root(tmp_path)
    text = (root / CONF).read_text().replace('access_drivers = [ "polkit"]',
                                             'access_drivers = [ "polkit", "nop" ]')
    (root / CONF).write_text(text)
    res = purge(root)
    assert (root / CONF).read_text() == text
    assert "libvirtd.conf: left as it is" in res.stderr


def test_purge_restores_a_replaced_line(tmp_path: Path) -> None:
    """An access_drivers list without polkit: virtdeb adds polkit, purge puts the old back."""
    root = fake_root(tmp_path)
    with (root / CONF).open("a") as f:
        f.write('access_drivers = [ "nop" ]\n')
    conf = (root / CONF).read_bytes()
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root), *CONSENT]) == 0
    marker = (root / PURGE_UNDO_DIR.lstrip("/") / CONF).read_text().splitlines()
    assert marker[1] == 'access_drivers = [ "nop" ]' and "polkit" in marker[0]
    purge(root)
    assert (root / CONF).read_bytes() == conf


def test_revert_takes_the_marker_with_the_line(tmp_path: Path) -> None:
    root, conf = granted_root(tmp_path)
    assert (root / PURGE_UNDO_DIR.lstrip("/") / CONF).is_file()
    assert main(["revert", "--root", str(root)]) == 0
    assert (root / CONF).read_bytes() == conf
    assert not (root / PURGE_UNDO_DIR.lstrip("/") / CONF).exists()


@pytest.mark.parametrize("grant_first", [False, True])
def test_purge_removes_only_files_virtdeb_created(tmp_path: Path, grant_first: bool) -> None:
    root = fake_root(tmp_path)
    mine = root / "etc/libvirt/hand-made.conf"
    mine.write_text("# the administrator's\n")
    if grant_first:
        assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 0
        assert (root / RULES_FILE.lstrip("/")).is_file()
    res = purge(root)
    assert mine.read_text() == "# the administrator's\n"
    assert ("virtdeb: removed /etc/polkit-1" in res.stdout) == grant_first
    assert not (root / RULES_FILE.lstrip("/")).exists()
