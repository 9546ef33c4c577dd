"""doctor starts the commands its checks run before it runs the checks (Host.start); what
it prints is still what the checks find when run one by one with nothing started early,
on this host and on faults's small root.  And Host.start itself: a started command's
result is the result run() gives without it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.faults import CLEAN_ENV, PY, TOP, URI, build_root
from virtdeb.errors import SystemCommandError
from virtdeb.host import DEFAULT_URI, Host
from virtdeb.rules import select

SCRIPT = ["sh", "-c", "echo out; echo err >&2; exit 3"]


def test_a_started_command_gives_what_run_gives() -> None:
    host = Host()
    plain = host.run(SCRIPT, check=False)
    host.start(SCRIPT)
    early = host.run(SCRIPT, check=False)
    assert (early.args, early.returncode, early.stdout, early.stderr) == \
        (plain.args, plain.returncode, plain.stdout, plain.stderr) == (SCRIPT, 3, "out\n", "err\n")
    host.start(SCRIPT)
    with pytest.raises(SystemCommandError, match=r"failed \(3\): err"):
        host.run(SCRIPT)
    assert host._started == {}


def test_a_started_command_that_cannot_start() -> None:
    host = Host()
    with pytest.raises(SystemCommandError) as plain:
        host.run(["virtdeb-no-such-command"])
    host.start(["virtdeb-no-such-command"])
    with pytest.raises(SystemCommandError) as early:
        host.run(["virtdeb-no-such-command"])
    assert early.value.message == plain.value.message


def test_input_or_close_ends_a_started_command() -> None:
    host = Host()
    host.start(["cat"])
    assert host.run(["cat"], input="fed\n").stdout == "fed\n"  # run anew, with its input
    host.start(["sleep", "30"])
    [(_, proc)] = host._started.values()
    start = time.monotonic()
    host.close()
    assert isinstance(proc, subprocess.Popen) and proc.returncode is not None
    assert time.monotonic() - start < 10 and host._started == {}


def _doctor_json(root: Path, uri: str) -> list[dict[str, str]]:
    proc = subprocess.run([PY, "-m", "virtdeb", "doctor", "--json", "--root", str(root),
                           "-c", uri], cwd=TOP, env={**CLEAN_ENV, "PYTHONPATH": str(TOP)},
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    return list(json.loads(proc.stdout))


def _one_by_one(root: Path, uri: str) -> list[dict[str, str]]:
    host = Host(root=root, uri=uri)
    try:
        return [{"rule": f.rule, "status": f.status.value, "message": f.message, "hint": f.hint}
                for rule in select([]) for f in rule(host).check()]
    finally:
        host.close()


@pytest.mark.parametrize("where", ["this host", "faults's small root"])
def test_doctor_prints_what_the_checks_find(where: str, tmp_path: Path) -> None:
    root, uri = (Path("/"), DEFAULT_URI) if where == "this host" else \
        (build_root(tmp_path / "root"), URI)
    assert _doctor_json(root, uri) == _one_by_one(root, uri)
