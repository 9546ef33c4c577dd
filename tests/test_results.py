"""The JSON result of the commands that change something against its documentation,
docs/results.md: every field of each table, with its type, and nothing else, in what the
real commands print on a scratch root (apply, a dry run, revert, a failure) and in what
maint refuses."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from virtdeb import cli, journal, maint, outcome
from virtdeb.effects.file import FileChange
from virtdeb.errors import VirtdebError
from virtdeb.host import Host
from virtdeb.rules import load_all

TOP = Path(__file__).resolve().parent.parent
DOC = TOP / "docs/results.md"
CASE = TOP / "tests/cases/dnsmasq/new-dropin/in"
TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "string": (str,), "boolean": (bool,), "string or null": (str, type(None)),
    "list of change": (list,), "list of refusal": (list,), "error": (dict,),
    "list of string": (list,)}

pytestmark = pytest.mark.skipif(not DOC.is_file(), reason="needs the source tree's docs/")


def tables() -> dict[str, dict[str, str]]:
    """Section title -> field -> type, from the tables of docs/results.md."""
    out: dict[str, dict[str, str]] = {}
    title = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        row = re.match(r"^\| `([a-z_]+)` \| ([a-z ]+) \|", line)
        if row:
            out.setdefault(title, {})[row.group(1)] = row.group(2).strip()
    return out


def conforms(data: dict[str, Any], table: dict[str, str], optional: tuple[str, ...] = ()) -> None:
    assert set(table) - set(optional) <= set(data) <= set(table), (sorted(data), sorted(table))
    for field, value in data.items():
        assert isinstance(value, TYPES[table[field]]), (field, value)


def check_result(data: dict[str, Any]) -> None:
    """A whole result: its own fields, its changes, refusals and error."""
    docs = tables()
    conforms(data, docs["The result"], optional=("error",))
    assert data["schema"] == outcome.SCHEMA == 1
    for change in data["changes"]:
        conforms(change, docs["A change"])
    for refusal in data["refused"]:
        conforms(refusal, docs["A refusal"])
    if "error" in data:
        conforms(data["error"], docs["An error"])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(list(argv))
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(CASE, tmp_path / "root", symlinks=True)
    return tmp_path / "root"


def test_the_documentation_has_its_tables() -> None:
    assert set(tables()) == {"The result", "A change", "A refusal", "An error", "The journal"}


def test_apply_dry_run_revert_and_failure_print_the_documented_result(
        root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, dry = run(capsys, "apply", "--json", "--dry-run", "--root", str(root), "dnsmasq")
    assert code == 0 and dry["dry_run"] and not dry["changed"] and dry["journal"] is None
    assert dry["changes"] and not (root / "etc/dnsmasq.d/00_libvirtd.conf").exists()
    check_result(dry)

    code, done = run(capsys, "apply", "--json", "--root", str(root), "dnsmasq")
    assert code == 0 and done["changed"] and done["command"] == "apply dnsmasq"
    assert [c["target"] for c in done["changes"]] == [c["target"] for c in dry["changes"]]
    assert any("+interface=lo" in c["diff"] for c in done["changes"])
    assert (root / f"var/lib/virtdeb/journal/{done['journal']}.json").is_file()
    check_result(done)

    code, again = run(capsys, "apply", "--json", "--root", str(root), "dnsmasq")
    assert code == 0 and not again["changed"] and again["changes"] == []
    check_result(again)

    code, undone = run(capsys, "revert", "--json", "--root", str(root), done["journal"])
    assert code == 0 and undone["journal"] == done["journal"]
    assert "/etc/dnsmasq.d/00_libvirtd.conf: removed (virtdeb had created it)" in [
        c["note"] for c in undone["changes"]]
    assert not (root / "etc/dnsmasq.d/00_libvirtd.conf").exists()
    check_result(undone)

    code, listed = run(capsys, "revert", "--list", "--json", "--root", str(root))
    assert code == 0 and listed["schema"] == 1 and set(listed) == {"schema", "entries"}
    assert [e["id"] for e in listed["entries"]] == [done["journal"]]
    assert listed["entries"][0]["status"] == "reverted"
    for entry in listed["entries"]:
        conforms(entry, tables()["The journal"])

    code, failed = run(capsys, "apply", "--json", "--root", str(root), "nosuchrule")
    assert code == 2 and failed["error"]["name"] == "usage" and not failed["changed"]
    check_result(failed)


def test_maint_refusal_is_documented(root: Path) -> None:
    host = Host(root=root)
    foreign = FileChange("qemu", "/etc/libvirt/qemu.conf", None, b"user = \"root\"\n",
                         foreign=True)
    result = maint.applied(host, [foreign], "test configure", "qemu")
    assert not result.changed and [r.target for r in result.refused] == [foreign.target]
    check_result(result.as_json())


def test_every_kind_and_error_name_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    kinds = re.search(r"^\| `kind` \|.*$", text, re.M)
    names = re.search(r"^\| `name` \|.*$", text, re.M)
    assert kinds and names
    assert set(re.findall(r"`([a-z-]+)`", kinds.group(0))) - {"kind"} == set(journal.KINDS)
    load_all()  # the rules' own errors too
    errors = {cls.name for cls in _subclasses(VirtdebError)} | {VirtdebError.name}
    assert set(re.findall(r"`([a-z-]+)`", names.group(0))) - {"name"} == errors


def _subclasses(cls: type) -> set[type]:
    out = set(cls.__subclasses__())
    return out.union(*(_subclasses(c) for c in out)) if out else out
