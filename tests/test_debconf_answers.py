"""virtdeb.debconf_answers: debconf values -> virtdeb.conf settings."""

from __future__ import annotations

import pytest

from virtdeb.debconf_answers import QUESTIONS, read_answers


class FakeDebconf:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, question: str) -> str:
        if question not in self.values:
            raise RuntimeError(10, f"{question} doesn't exist")
        return self.values[question]


def test_all_answers_converted() -> None:
    db = FakeDebconf({
        "virtdeb/allow_edit": "qemu.conf, bridge.conf",
        "virtdeb/access_users": "alice,  bob carol",
        "virtdeb/bridge_allow": "br0",
        "virtdeb/xend_http_server": "false",
        "virtdeb/network_autostart": "true",
        "virtdeb/cpu_on_microcode": "fix",
    })
    assert read_answers(db) == {
        "virtdeb.allow_edit": "qemu.conf bridge.conf",
        "access.users": "alice bob carol",
        "bridge.allow": "br0",
        "xend.http_server": "no",
        "network.autostart_default": "yes",
        "cpu.on_microcode": "fix",
    }


def test_unknown_questions_and_bad_values_left_out() -> None:
    db = FakeDebconf({"virtdeb/cpu_on_microcode": "sometimes", "virtdeb/allow_edit": ""})
    assert read_answers(db) == {"virtdeb.allow_edit": ""}


def test_answers_are_valid_config_overrides() -> None:
    config = pytest.importorskip("virtdeb.config")
    db = FakeDebconf({q: "" for q in QUESTIONS} | {
        "virtdeb/xend_http_server": "true", "virtdeb/cpu_on_microcode": "nothing"})
    parsed = config.Config.parse("", overrides=read_answers(db))
    assert parsed.get("xend", "http_server") == "yes"
    assert parsed.get("cpu", "on_microcode") == "nothing"


def test_templates_match_questions() -> None:
    from pathlib import Path
    templates = Path(__file__).resolve().parent.parent / "debian" / "templates"
    if not templates.exists():
        pytest.skip("source tree only")
    names = {line.split(":", 1)[1].strip() for line in templates.read_text().splitlines()
             if line.startswith("Template:")}
    assert names == set(QUESTIONS)
