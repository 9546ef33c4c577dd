"""Rule ``access``: the libvirt group in fake roots holding the /etc/passwd, /etc/group and
/etc/gshadow of a Debian minbase system (tests/data/etc; see also tests/cases/access)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.golden import snapshot
from tests.harness.procs import PATH
from virtdeb.cli import main
from virtdeb.errors import UsageError
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import Status
from virtdeb.rules.access import Access
from virtdeb.system import groups

EXTRA_USERS = "alice:x:1001:1001:Alice,,,:/home/alice:/bin/bash\n"
ETC = Path(__file__).parent / "data/etc"


def fake_root(tmp_path: Path) -> Path:
    """A root with the passwd/group/gshadow of a Debian minbase system (tests/data/etc,
    never the host's), alice added, no libvirt group."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "gshadow"):
        shutil.copy2(ETC / name, root / "etc" / name)
    with open(root / "etc/passwd", "a") as fh:
        fh.write(EXTRA_USERS)
    return root


def host(root: Path, **overrides: str) -> Host:
    return Host(root=root, uri="test:///default", overrides=overrides)


def apply(h: Host) -> None:
    Journal(h).apply(Access(h).plan(), "test")


def test_creates_system_group_like_addgroup(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    h = host(root, **{"access.users": "alice nobody"})
    expected_gid = groups.free_system_gid(h)
    used = {g.gid for g in groups.groups(h).values()}
    assert 100 <= expected_gid <= 999 and expected_gid not in used
    assert all(gid in used for gid in range(100, expected_gid))  # the first free one
    before = snapshot(root)
    apply(h)
    group = groups.groups(h)["libvirt"]
    assert (group.gid, group.members) == (expected_gid, ("alice", "nobody"))
    gshadow = (root / "etc/gshadow").read_text().splitlines()
    assert "libvirt:!::alice,nobody" in gshadow
    assert Access(h).plan() == []
    Journal(h).revert()
    assert snapshot(root) == before


def test_group_files_pass_grpck(tmp_path: Path) -> None:
    """shadow's own checker accepts what virtdeb wrote (members known to the host)."""
    root = fake_root(tmp_path)
    h = host(root, **{"access.users": "nobody daemon"})
    apply(h)
    proc = subprocess.run(["grpck", "-r", str(root / "etc/group"), str(root / "etc/gshadow")],
                          capture_output=True, text=True, env={"PATH": PATH}, check=False)
    assert "libvirt" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_adduser_conf_range_is_honoured(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    (root / "etc/adduser.conf").write_text("FIRST_SYSTEM_GID=500\nLAST_SYSTEM_GID=600\n")
    h = host(root)
    apply(h)
    assert groups.groups(h)["libvirt"].gid == 500


@pytest.mark.parametrize("name", ["root;id", "-rf", "a b", "../x", "ünï", "x" * 33, "123",
                                  "Alice", "al:ice", "al,ice", "$(id)"])
def test_hostile_names_refused_nothing_written(tmp_path: Path, name: str) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    h = host(root, **{"access.users": f"alice {name}"})
    if len(name.split()) > 1:  # "a b" is two words of a list: "a" is the refused one
        name = name.split()[0]
    with pytest.raises(UsageError, match="refused|does not exist") as err:
        Access(h).plan()
    assert "\n" not in str(err.value)
    assert snapshot(root) == before
    status = [f.status for f in Access(h).check()]
    assert status == [Status.FAIL]


def test_unknown_user_refused(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    h = host(root, **{"access.users": "alice carol"})
    with pytest.raises(UsageError, match="'carol' does not exist in /etc/passwd"):
        Access(h).plan()


def test_empty_value_via_cli_changes_nothing(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    rc = main(["apply", "access", "--root", str(root), "--set", "access.users=root;id"])
    assert rc == 2
    assert "refused" in capsys.readouterr().err
    assert snapshot(root) == before


def test_extra_member_reported_not_removed(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    apply(host(root, **{"access.users": "alice nobody"}))
    h = host(root, **{"access.users": "alice"})
    findings = Access(h).check()
    warn = [f for f in findings if f.status is Status.WARN]
    assert [f.message for f in warn] == ["nobody is in group libvirt but not in [access] users"]
    assert "access.prune=yes" in warn[0].hint
    note = findings[-1]
    assert note.status is Status.NOTE and "alice, nobody" in note.message
    assert "root" in note.hint
    assert Access(h).plan() == []
    pruned = host(root, **{"access.users": "alice", "access.prune": "yes"})
    apply(pruned)
    assert groups.groups(pruned)["libvirt"].members == ("alice",)


def test_empty_users_leaves_membership_alone(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    apply(host(root, **{"access.users": "alice"}))
    h = host(root, **{"access.prune": "yes"})
    assert Access(h).plan() == []
    assert not [f for f in Access(h).check() if f.status is Status.WARN]


def test_missing_group_is_a_failure(tmp_path: Path) -> None:
    h = host(fake_root(tmp_path))
    assert [f.status for f in Access(h).check()] == [Status.FAIL]


def test_group_changed_meanwhile_is_a_conflict(tmp_path: Path) -> None:
    from virtdeb.effects import ConflictError

    root = fake_root(tmp_path)
    h = host(root, **{"access.users": "alice"})
    changes = Access(h).plan()
    with open(root / "etc/group", "a") as fh:
        fh.write("other:x:4242:\n")
    with pytest.raises(ConflictError):
        Journal(h).apply(changes, "test")
