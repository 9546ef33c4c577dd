"""The engine on fake roots: Editor, the writer, journal and revert, config, CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from virtdeb import cli, fsio
from virtdeb.config import Config
from virtdeb.debconf_answers import save_changes
from virtdeb.edit import Editor
from virtdeb.effects import ConflictError
from virtdeb.effects.file import FileChange
from virtdeb.errors import ParseError, UnsafePathError, UsageError
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.report import findings_text
from virtdeb.rules import Finding, Status

# Xen 4.2's xend-config.sxp as Debian shipped it (kept in git by its golden case).
XEND = Path(__file__).resolve().parent / "cases/xend/real-4.2/in/etc/xen/xend-config.sxp"
CONF = "/etc/xen/xend-config.sxp"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc/xen").mkdir(parents=True)
    shutil.copy(XEND, r / "etc/xen/xend-config.sxp")
    return r


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- Editor --------------------------------------------------------------------
def test_editor_no_change_leaves_no_change(root: Path) -> None:
    with Editor(Host(root=root), CONF, "Xendline.lns") as ed:
        assert ed.get("xend-unix-server") == "yes"
        assert ed.get("network-script") is None  # "(network-script )" has no value
    assert ed.changes == []


def test_editor_diff_is_minimal(root: Path) -> None:
    with Editor(Host(root=root), CONF, "Xendline.lns") as ed:
        ed.set("xend-unix-server", "no")
    (change,) = ed.changes
    diff = change.diff()
    assert "-(xend-unix-server yes)\n+(xend-unix-server no)\n" in diff
    assert sum(1 for line in diff.splitlines() if line[:1] in "+-") == 4  # 2 headers + 2


def test_editor_parse_error_names_file_line_column(root: Path) -> None:
    path = root / "etc/xen/xend-config.sxp"
    path.write_text("(xend-unix-server yes)\n(broken (nested value))\n")
    before = path.read_bytes()
    with pytest.raises(ParseError) as err:
        with Editor(Host(root=root), CONF, "Xendline.lns"):
            pytest.fail("the body must not run on a parse error")
    message = str(err.value)
    assert message.startswith(f"{CONF}:2:")
    assert "\n" not in message
    assert path.read_bytes() == before


def test_editor_body_exception_makes_no_change(root: Path) -> None:
    with pytest.raises(RuntimeError):
        with Editor(Host(root=root), CONF, "Xendline.lns") as ed:
            ed.set("xend-unix-server", "no")
            raise RuntimeError("boom")
    assert ed.change is None


def test_editor_refuses_non_utf8(root: Path) -> None:
    (root / "etc/xen/xend-config.sxp").write_bytes(b"(a b)\n(c \xff)\n")
    with pytest.raises(ParseError, match=r":2: not UTF-8"):
        with Editor(Host(root=root), CONF, "Xendline.lns"):
            pass


def test_editor_refuses_symlink(root: Path, tmp_path: Path) -> None:
    target = root / "etc/xen/xend-config.sxp"
    outside = tmp_path / "outside"
    target.rename(outside)
    target.symlink_to(outside)
    with pytest.raises(UnsafePathError, match="symlink"):
        with Editor(Host(root=root), CONF, "Xendline.lns"):
            pass


def test_editor_creates_new_file_with_marker(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    with Editor(host, "/etc/dnsmasq.d/00_libvirtd.conf", "Dnsmasq.lns", own=True) as ed:
        ed.set("interface", "lo")
    Journal(host).apply(ed.changes, "test")
    assert (tmp_path / "etc/dnsmasq.d/00_libvirtd.conf").read_text() == "interface=lo\n"
    assert (tmp_path / "var/lib/virtdeb/created/etc/dnsmasq.d/00_libvirtd.conf").exists()
    mode = stat.S_IMODE((tmp_path / "etc/dnsmasq.d/00_libvirtd.conf").stat().st_mode)
    assert mode == 0o644


# -- the writer -----------------------------------------------------------------
@pytest.mark.root  # chown to another owner
def test_atomic_write_keeps_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    os.chown(path, 1234, 4321)
    fsio.atomic_write(path, b"new", "/f")
    st = path.stat()
    assert path.read_bytes() == b"new"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 4321)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_write_refuses_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root/etc").mkdir(parents=True)
    (tmp_path / "root/etc/dnsmasq.d").symlink_to(tmp_path / "elsewhere")
    host = Host(root=tmp_path / "root")
    change = FileChange("t", "/etc/dnsmasq.d/x.conf", None, b"x\n")
    with pytest.raises(UnsafePathError):
        Journal(host).apply([change], "test")
    assert list((tmp_path / "elsewhere").iterdir()) == []


# -- journal and revert -----------------------------------------------------------
def test_revert_by_id_and_conflict(root: Path) -> None:
    host = Host(root=root)
    path = root / "etc/xen/xend-config.sxp"
    original = path.read_bytes()
    first = Journal(host).apply([FileChange("t", CONF, original, b"one\n")], "first")
    second = Journal(host).apply([FileChange("t", CONF, b"one\n", b"two\n")], "second")
    assert first and second and first.id != second.id
    Journal(host).revert()  # the newest: back to "one"
    assert path.read_bytes() == b"one\n"
    Journal(host).revert(first.id)
    assert path.read_bytes() == original
    with pytest.raises(UsageError, match="already reverted"):
        Journal(host).revert(first.id)
    third = Journal(host).apply([FileChange("t", CONF, original, b"three\n")], "third")
    assert third
    path.write_bytes(b"the admin edited it\n")
    with pytest.raises(ConflictError, match="changed since"):
        Journal(host).revert()
    assert path.read_bytes() == b"the admin edited it\n"


def test_prepare_checks_every_file_before_writing_any(root: Path, tmp_path: Path) -> None:
    host = Host(root=root)
    good = FileChange("t", "/etc/a.conf", None, b"a\n")
    (root / "etc/b.conf").write_bytes(b"changed meanwhile\n")
    stale = FileChange("t", "/etc/b.conf", b"what the plan saw\n", b"b\n")
    with pytest.raises(ConflictError):
        Journal(host).apply([good, stale], "test")
    assert not (root / "etc/a.conf").exists()
    assert not (root / "var/lib/virtdeb/journal").exists()


def test_journal_is_private(root: Path) -> None:
    host = Host(root=root)
    entry = Journal(host).apply([FileChange("t", "/etc/a", None, b"a")], "test")
    assert entry
    mode = (root / f"var/lib/virtdeb/journal/{entry.id}.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


# -- config -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "line", "words"), [
    ("allow_edit = qemu.conf\n", 1, "section"),
    ("[virtdeb]\nallow_edit = qemu.conf nope.conf\n", 2, "nope.conf"),
    ("[xend]\n\nhttp_server = maybe\n", 3, "not one of"),
    ("[bogus]\nx = 1\n", 1, "unknown section"),
    ("[cpu]\non_microcode = warn\nwhatever = 1\n", 3, "unknown key"),
    ("[cpu]\non_microcode = warn\non_microcode = fix\n", 3, "twice"),
    ("[cpu]\njust words\n", 2, "key = value"),
])
def test_config_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(ParseError) as err:
        Config.parse(text, "/etc/virtdeb/virtdeb.conf")
    assert str(err.value).startswith(f"/etc/virtdeb/virtdeb.conf:{line}:")
    assert words in str(err.value)


def test_config_save_keeps_comments_and_round_trips(tmp_path: Path) -> None:
    host = Host(root=tmp_path)
    first = {"bridge.allow": "br0", "xend.http_server": "no", "access.users": ""}
    Journal(host).apply(save_changes(host, first), "test")
    conf = Config.load(host.config_path)
    assert conf.words("bridge", "allow") == ["br0"] and conf.words("access", "users") == []
    assert save_changes(host, first) == []  # nothing differs: nothing written
    text = host.config_path.read_text().replace("[bridge]", "# the lab\n[bridge]")
    host.config_path.write_text(text)
    Journal(host).apply(save_changes(host, {"bridge.allow": "br0 br1"}), "test")
    after = host.config_path.read_text()
    assert "# the lab\n[bridge]\nallow = br0 br1\n" in after
    assert after.replace("br0 br1", "br0") == text
    with pytest.raises(UsageError, match="debconf bridge.nope: no such setting"):
        save_changes(host, {"bridge.nope": "x"})


# -- CLI ----------------------------------------------------------------------------
def test_cli_doctor_exit_codes_and_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["doctor", "--root", str(root), "xend"], capsys)
    assert code == 0 and "PASS" in out and "\033[" not in out
    path = root / "etc/xen/xend-config.sxp"
    path.write_text(path.read_text().replace("(xend-unix-server yes)", "(xend-unix-server no)"))
    code, out, _ = run(["doctor", "--root", str(root), "--json", "xend"], capsys)
    assert code == 1
    assert {"rule": "xend", "status": "FAIL"}.items() <= json.loads(out)[0].items()
    code, out, _ = run(["doctor", "--root", str(root), "-q", "xend"], capsys)
    assert out.count("\n") == 1 and "FAIL" in out


def test_cli_usage_errors_exit_2(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["doctor", "--root", str(root), "nosuchrule"], capsys)
    assert code == 2 and "unknown rule 'nosuchrule'" in err
    code, _, err = run(["apply", "--root", str(root), "--set", "xend.http_server=maybe", "xend"],
                       capsys)
    assert code == 2 and err.count("\n") == 1
    (root / "etc/virtdeb").mkdir()
    (root / "etc/virtdeb/virtdeb.conf").write_text("[xend]\nhttp_server = perhaps\n")
    code, _, err = run(["doctor", "--root", str(root), "xend"], capsys)
    assert code == 2 and "/etc/virtdeb/virtdeb.conf:2:" in err


def test_cli_apply_dry_run_then_apply_then_noop_then_revert(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = root / "etc/xen/xend-config.sxp"
    path.write_text(path.read_text().replace("(xend-unix-server yes)", "(xend-unix-server no)"))
    before = path.read_bytes()
    code, out, _ = run(["apply", "--root", str(root), "--dry-run", "xend"], capsys)
    assert code == 0 and "+(xend-unix-server yes)" in out and "nothing written" in out
    assert path.read_bytes() == before and not (root / "var/lib/virtdeb").exists()
    code, out, _ = run(["apply", "--root", str(root), "xend"], capsys)
    assert code == 0 and "journal entry" in out
    code, out, _ = run(["apply", "--root", str(root), "xend"], capsys)
    assert code == 0 and out.startswith("nothing to change")
    code, out, _ = run(["revert", "--root", str(root)], capsys)
    assert code == 0 and path.read_bytes() == before
    code, out, _ = run(["revert", "--root", str(root), "--list"], capsys)
    assert "reverted" in out


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("virtdeb ")


def test_colour_only_on_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    finding = [Finding("xend", Status.FAIL, "broken", "fix it")]
    plain, tty = io.StringIO(), Tty()
    findings_text(finding, plain)
    findings_text(finding, tty)
    assert "\033[31mFAIL\033[0m" in tty.getvalue() and "\033[" not in plain.getvalue()
    assert "(fix it)" in plain.getvalue()
