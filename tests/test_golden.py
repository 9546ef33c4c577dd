"""Every golden case: doctor says what ``findings`` says before and after, apply gives
``out``, a second apply changes nothing, revert gives back ``in`` byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.golden import CASES, cases, findings_text, make_root, settings, snapshot
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import select


def plan(root: Path, rule: str, overrides: dict[str, str]) -> list:
    host = Host(root=root, uri="test:///default", overrides=overrides)
    return [c for r in select([rule]) for c in r(host).plan()], host


def doctor(root: Path, rule: str, overrides: dict[str, str]) -> list[str]:
    host = Host(root=root, uri="test:///default", overrides=overrides)
    return [f"{f.status.value} {f.message}" for r in select([rule]) for f in r(host).check()]


# bridge cases set the helper's file capability (a security.* xattr): root only
@pytest.mark.parametrize(("rule", "case"), [
    pytest.param(rule, case, marks=[pytest.mark.root] if rule == "bridge" else [])
    for rule, case in cases()])
def test_golden(rule: str, case: str, tmp_path: Path) -> None:
    where = CASES / rule / case
    root = make_root(where, tmp_path)
    before = snapshot(root)
    said_before = doctor(root, rule, settings(where))
    changes, host = plan(root, rule, settings(where))
    Journal(host).apply(changes, f"test {rule}")
    assert snapshot(root) == snapshot(where / "out")
    said = findings_text(said_before, doctor(root, rule, settings(where)))
    if os.environ.get("VIRTDEB_GOLDEN_UPDATE") == "1":
        (where / "findings").write_text(said, encoding="utf-8")
    assert said == (where / "findings").read_text(encoding="utf-8")
    again, _ = plan(root, rule, settings(where))
    assert again == [], "a second apply must change nothing"
    if changes:
        Journal(host).revert()
    assert snapshot(root) == before
