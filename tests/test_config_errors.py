"""Every error for a bad value in virtdeb.conf names the file, the line, the section and
the key: the values SCHEMA checks when the file is read, and those a rule checks against
the host (a bridge name, a user name, a user that does not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from virtdeb import cli

CONF = "/etc/virtdeb/virtdeb.conf"
PASSWD = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = "root:x:0:\nlibvirt:x:107:\n"


def make_root(tmp_path: Path, conf: str) -> Path:
    root = tmp_path / "root"
    for rel, text in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/gshadow", ""),
                      ("etc/qemu/bridge.conf", "allow virbr0\n"),
                      ("usr/lib/qemu/qemu-bridge-helper", "helper\n"),
                      (CONF.lstrip("/"), conf)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


CASES = [
    # (file text, rule, line, "[section] key", what the message also says)
    # the whole file is checked when a rule first reads it: bridge does
    ("[xend]\nhttp_server = perhaps\n", "bridge", 2, "[xend] http_server", "'perhaps'"),
    ("# mine\n[bridge]\nallow = br0 br/1\n", "bridge", 3, "[bridge] allow", "'br/1'"),
    ("[virtdeb]\nallow_edit = qemu.conf\n\n[access]\nusers = alice carol\n", "access", 5,
     "[access] users", "'carol' does not exist"),
    ("[access]\n# who\nusers =\n  alice\n  -rf\n", "access", 3, "[access] users", "'-rf'"),
    ("[cpu]\non_microcode = always\n", "bridge", 2, "[cpu] on_microcode", "'always'"),
]


@pytest.mark.parametrize(("text", "rule", "line", "key", "what"), CASES,
                         ids=[c[3] + "-" + c[4] for c in CASES])
def test_bad_value_names_file_line_section_key(tmp_path: Path, text: str, rule: str,
                                               line: int, key: str, what: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, text)
    code = cli.main(["apply", "--root", str(root), "--connect", "test:///default",
                     "--dry-run", rule])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith(f"virtdeb: error: {CONF}:{line}: {key}: "), err
    assert what in err


def test_a_set_override_names_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, "[access]\nusers = alice\n")
    code = cli.main(["apply", "--root", str(root), "--dry-run", "--set",
                     "access.users=alice carol", "access"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("virtdeb: error: --set access.users: user 'carol'"), err


def test_doctor_says_where_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path, "[access]\nusers = carol\n")
    code = cli.main(["doctor", "--root", str(root), "access"])
    out = capsys.readouterr().out
    assert code == 1 and f"{CONF}:2: [access] users: user 'carol' does not exist" in out, out
