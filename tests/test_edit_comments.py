"""A read-only Editor (comments=False) on libvirt's lenses parses the file with its
comment lines blanked: the same entries and values, and the same error where the file
does not parse, as the Editor that parses every line.  Checked on libvirt's real
libvirtd.conf and qemu.conf and on a few thousand damaged copies of them."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tests.harness.faults import REAL_LIBVIRTD_CONF, REAL_QEMU_CONF
from virtdeb.edit import BLANKABLE, Editor, blank_comments
from virtdeb.errors import ParseError
from virtdeb.host import Host

SOURCES = {"Libvirtd.lns": [REAL_LIBVIRTD_CONF, Path("/etc/libvirt/libvirtd.conf")],
           "Libvirtd_qemu.lns": [REAL_QEMU_CONF, Path("/etc/libvirt/qemu.conf")]}
CONF = "/etc/libvirt/test.conf"
# What a damaged or hand-edited copy may have: comments inside arrays and strings,
# brackets and quotes in comments, indented comments (not comments for these lenses),
# carriage returns, unterminated values, values over several lines.
PIECES = ["#x", "# [", '#"', "#]", "  # indented", "#\r", "# \"a\" [ ]", "", "   ", "\r",
          "log_level = 1", "user = \"qemu\"", 'log_filters = "a', 'log_filters = "1:qemu"',
          'access_drivers = [ "a",', ' "b" ]', "]", "[", '"', "bogus", "#" * 3,
          'unix_sock_group = "a', '#c', 'b"', 'access_drivers = [', '# inside', ' "x" ]',
          'security_driver = [ "selinux",', '#', ' "dac" ]', "group = \"kvm\" # trailing"]


def outcome(root: Path, lens: str, text: str, comments: bool) -> object:
    """The entries and values (no #comment or #empty node) of ``text``, or its error."""
    real = root / CONF.lstrip("/")
    real.parent.mkdir(parents=True, exist_ok=True)
    real.write_text(text, encoding="utf-8")
    try:
        with Editor(Host(root=root), CONF, lens, comments=comments) as ed:
            return _entries(ed, ed.tree)
    except ParseError as exc:
        return ("error", exc.message)


def _entries(ed: Editor, path: str) -> list[tuple[str, str | None, object]]:
    out: list[tuple[str, str | None, object]] = []
    for child in ed.aug.match(f"{path}/*"):
        label = ed.aug.label(child)
        label = label.decode() if isinstance(label, bytes) else label
        if label not in ("#comment", "#empty"):
            value = ed.aug.get(child)
            value = value.decode() if isinstance(value, bytes) else value
            out.append((label, value, _entries(ed, child)))
    return out


def _texts(lens: str) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in SOURCES[lens] if p.is_file()]


def _examples(text: str) -> list[str]:
    """``text`` with one example setting uncommented, for each example; an array example
    with its lines up to the closing "]" (the comments among them stay comments)."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        if re.match(r"#[ \t]*\w+[ \t]*=", line):
            copy = list(lines)
            copy[i] = line.lstrip("#").lstrip()
            if "[" in copy[i] and "]" not in copy[i]:
                for j in range(i + 1, len(lines)):
                    if not re.match(r"#[ \t]+[\"\]]", lines[j]):
                        continue  # a comment line inside the array
                    copy[j] = lines[j].lstrip("#")
                    if "]" in lines[j]:
                        break
            out.append("\n".join(copy))
    return out


@pytest.mark.parametrize("lens", sorted(BLANKABLE))
def test_real_files_read_alike(lens: str, tmp_path: Path) -> None:
    """As installed (every setting commented out), and with each example setting
    uncommented in turn (arrays over several lines, comments among them included)."""
    texts = _texts(lens)
    assert texts
    parsed = 0
    for text in texts:
        for variant in [text, *_examples(text)]:
            assert blank_comments(variant).count("\n") == variant.count("\n")
            full = outcome(tmp_path, lens, variant, True)
            assert outcome(tmp_path, lens, variant, False) == full, variant
            parsed += bool(full) and not isinstance(full, tuple)
    assert parsed > 20  # examples that parse, with an entry


@pytest.mark.parametrize("lens", sorted(BLANKABLE))
def test_damaged_copies_read_alike(lens: str, tmp_path: Path) -> None:
    rng = random.Random(lens)
    texts = _texts(lens)
    errors = 0
    for _ in range(150):
        lines = rng.choice(texts).split("\n")
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(lines) + 1)
            roll = rng.random()
            if roll < 0.6:
                lines.insert(at, rng.choice(PIECES))
            elif roll < 0.85 and at < len(lines) and lines[at].startswith("#"):
                lines[at] = lines[at].lstrip("#").lstrip()  # uncomment an example
            elif at < len(lines):
                del lines[at]
        text = "\n".join(lines)
        full = outcome(tmp_path, lens, text, True)
        assert outcome(tmp_path, lens, text, False) == full, text
        errors += isinstance(full, tuple)
    assert 10 < errors < 140  # both kinds were tried


def test_a_read_only_editor_changes_nothing(tmp_path: Path) -> None:
    real = tmp_path / CONF.lstrip("/")
    real.parent.mkdir(parents=True)
    real.write_text("# a comment\nlog_level = 1\n")
    with Editor(Host(root=tmp_path), CONF, "Libvirtd.lns", comments=False) as ed:
        assert ed.last("log_level") == "1"
        with pytest.raises(ValueError, match="read-only"):
            ed.set("log_level", "2")
    assert ed.change is None
