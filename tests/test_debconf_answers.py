"""virtdeb.debconf_answers: debconf values -> virtdeb.conf settings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from virtdeb import config
from virtdeb.debconf_answers import questions, read_answers


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
    db = FakeDebconf({q: "" for q in questions()} | {
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
    assert names == set(questions())


# -- the real protocol: a debconf frontend, a script that sourced confmodule ---
REAL_SCRIPT = """#!/bin/sh
set -e
. /usr/share/debconf/confmodule
exec /usr/bin/python3 {reader} {out}
"""
READER = """import json, sys
sys.path.insert(0, {top!r})
from virtdeb.debconf_answers import read_answers
answers = read_answers()
with open(sys.argv[1], "w") as fh:
    json.dump(answers, fh)
"""


def test_read_answers_through_a_real_debconf_frontend(tmp_path: Path) -> None:
    """As the postinst runs it: confmodule sourced, then the Python entry exec'd.

    A private debconf database (DEBCONF_SYSTEMRC) keeps the host's untouched.
    """
    if not Path("/usr/share/debconf/frontend").exists():
        pytest.skip("needs debconf")
    top = Path(__file__).resolve().parent.parent
    templates = top / "debian" / "templates"
    if not templates.exists():
        pytest.skip("needs the source tree (debian/templates)")
    rc = tmp_path / "debconf.conf"
    rc.write_text(
        "Config: configdb\nTemplates: templatedb\n\n"
        f"Name: configdb\nDriver: File\nFilename: {tmp_path}/config.dat\n\n"
        f"Name: templatedb\nDriver: File\nMode: 644\nFilename: {tmp_path}/templates.dat\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBCONF_SYSTEMRC": str(rc),
           "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    subprocess.run(["debconf-loadtemplate", "virtdeb", str(templates)], env=env, check=True)
    subprocess.run(["debconf-set-selections"], env=env, check=True, text=True, input=(
        "virtdeb virtdeb/bridge_allow string br0 virbr9\n"
        "virtdeb virtdeb/cpu_on_microcode select fix\n"
        "virtdeb virtdeb/allow_edit multiselect bridge.conf, qemu.conf\n"))
    reader = tmp_path / "reader.py"
    reader.write_text(READER.format(top=str(top)))
    out = tmp_path / "answers.json"
    script = tmp_path / "virtdeb.postinst"
    script.write_text(REAL_SCRIPT.format(reader=reader, out=out))
    script.chmod(0o755)
    proc = subprocess.run(["/usr/share/debconf/frontend", str(script)], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "VERSION" not in proc.stdout + proc.stderr  # the protocol stayed on its pipes
    answers = json.loads(out.read_text())
    assert answers["bridge.allow"] == "br0 virbr9"
    assert answers["cpu.on_microcode"] == "fix"
    assert answers["virtdeb.allow_edit"] == "bridge.conf qemu.conf"
    assert answers["xend.http_server"] == "no"  # the template's default


def test_answers_and_their_checksum_are_one_journal_entry(tmp_path: Path) -> None:
    """conf.sha256 (what debian/config compares virtdeb.conf with) is written with the
    answers it belongs to, in the same journal entry: one revert undoes both."""
    import hashlib

    from virtdeb import maint
    from virtdeb.debconf_answers import save_changes
    from virtdeb.host import Host
    from virtdeb.journal import Journal

    host = Host(root=tmp_path)
    changes = save_changes(host, {"bridge.allow": "br0"})
    done = maint.applied(host, changes + maint.synced_changes(host, changes), "test", "config")
    conf = (tmp_path / "etc/virtdeb/virtdeb.conf").read_bytes()
    synced = tmp_path / maint.SYNCED.lstrip("/")
    assert synced.read_text() == hashlib.sha256(conf).hexdigest() + "\n"
    [entry] = Journal(host).entries()
    assert entry.id == done.journal
    assert entry.targets() == ["/etc/virtdeb/virtdeb.conf", maint.SYNCED]
    assert maint.synced_changes(host, []) == []  # in step: nothing to write
    Journal(host).revert(entry.id)
    assert not synced.exists() and not (tmp_path / "etc/virtdeb/virtdeb.conf").exists()
