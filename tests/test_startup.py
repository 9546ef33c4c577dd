"""Start-up cost of `virtdeb doctor`: it imports only what the rules asked for need.

bench/doctor.py measures the time; these tests keep the imports from creeping
back (each costs milliseconds of every doctor run) and check that every
subcommand is still there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.harness.faults import CLEAN_ENV, PY, TOP, URI, build_root
from virtdeb import cli
from virtdeb.errors import UsageError
from virtdeb.host import DEFAULT_URI, system_daemon
from virtdeb.rules import select

# Imported by `virtdeb doctor xend` once, needed by none of its steps.  (Rule modules
# import their engines, the journal and the effects that talk to libvirt where they use
# them.)
NOT_FOR_DOCTOR = ("virtdeb.commands.acl", "virtdeb.commands.debug", "virtdeb.commands.cpu_check",
                  "virtdeb.cpu.compare", "virtdeb.cpu.microcode", "virtdeb.effects.domain",
                  "virtdeb.journal", "libvirt", "difflib", "uuid", "virtdeb.outcome",
                  "virtdeb.effects.file", "debian.debian_support", "apt_pkg")
# Needed only to plan or with a libvirt daemon: a doctor of every rule on a host at rest
# imports none of them (the effects a plan returns, python-debian, the XML of libvirt).
NOT_FOR_DOCTOR_AT_REST = (*NOT_FOR_DOCTOR, "virtdeb.effects.network", "virtdeb.effects.group",
                          "virtdeb.effects.capability", "virtdeb.effects.statoverride",
                          "virtdeb.effects.service", "virtdeb.effects.alternative",
                          "xml.etree.ElementTree", "debian")


PROBE = """
import json, sys
from virtdeb.cli import main
code = main(sys.argv[1:])
json.dump({"code": code, "modules": sorted(sys.modules)}, sys.stderr)
"""


def _modules(*argv: str) -> tuple[int, set[str]]:
    """The exit code of ``virtdeb ARGV`` and the modules it imported."""
    proc = subprocess.run([PY, "-c", PROBE, *argv], cwd=TOP,
                          env={**CLEAN_ENV, "PYTHONPATH": str(TOP)},
                          capture_output=True, text=True, check=False, timeout=60)
    result = json.loads(proc.stderr.splitlines()[-1])
    return result["code"], set(result["modules"])


def _doctor_modules(root: Path, *rules: str, uri: str = URI) -> tuple[int, set[str]]:
    return _modules("doctor", "--root", str(root), "-c", uri, *rules)


def test_a_subcommand_imports_no_other_subcommand(tmp_path: Path) -> None:
    code, modules = _modules("cpu-check", "--root", str(tmp_path), "-c", URI)
    assert code == 0  # test:///default: no custom CPU model to compare
    assert "virtdeb.commands.cpu_check" in modules
    assert {m for m in modules if m.startswith("virtdeb.commands.")} == {
        "virtdeb.commands.cpu_check", "virtdeb.commands.options"}
    # a check without --fix plans no fix (and imports no XML diff)
    assert [m for m in ("virtdeb.cpu.fix", "virtdeb.effects.domain", "difflib")
            if m in modules] == []


def test_doctor_imports_only_what_its_rules_need(tmp_path: Path) -> None:
    code, modules = _doctor_modules(build_root(tmp_path / "root"), "xend")
    assert code in (0, 1)
    assert "virtdeb.rules.xend" in modules
    assert [m for m in NOT_FOR_DOCTOR if m in modules] == []


def test_doctor_without_rules_still_runs_every_rule(tmp_path: Path) -> None:
    code, modules = _doctor_modules(build_root(tmp_path / "root"))
    assert code in (0, 1)
    assert {"virtdeb.rules.cpu", "virtdeb.rules.network"} <= modules


@pytest.mark.skipif(system_daemon(), reason="a libvirt daemon (or its socket) runs here")
def test_doctor_on_a_host_at_rest_does_not_import_libvirt(tmp_path: Path) -> None:
    """qemu:///system without a daemon socket: every rule that asks libvirt says it cannot
    connect, and libvirt (about 18 ms) is never imported."""
    code, modules = _doctor_modules(build_root(tmp_path / "root"), uri=DEFAULT_URI)
    assert code in (0, 1)
    assert {"virtdeb.rules.cpu", "virtdeb.rules.network"} <= modules
    assert "libvirt" not in modules and "virtdeb.cpu.compare" not in modules
    assert [m for m in NOT_FOR_DOCTOR_AT_REST if m in modules] == []


@pytest.mark.parametrize("command", ["acl", "debug", "cpu-check"])
def test_every_subcommand_is_still_offered(command: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert command in capsys.readouterr().out
    assert cli.main([command, "--help"]) == 0
    assert f"usage: virtdeb {command}" in capsys.readouterr().out


def test_unknown_rule_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known rules: xend, debug, network"):
        select(["nosuchrule"])
