"""The Ansible module reads virtdeb's JSON result (docs/results.md): the two must stay in
step.

Here the real command prints its result on a scratch root and the module's helpers
(ansible/plugins/module_utils/virtdeb.py) read it. The fleet test (tests/test_fleet.py)
runs the module for real over SSH.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from virtdeb import cli

# the collection is in the source tree, not in the package: not for autopkgtest's unit run
pytestmark = pytest.mark.integration

TOP = Path(__file__).resolve().parent.parent
MODULE_UTILS = TOP / "ansible/plugins/module_utils/virtdeb.py"
CASE = TOP / "tests/cases/dnsmasq/new-dropin/in"


def _module_utils() -> ModuleType:
    spec = importlib.util.spec_from_file_location("virtdeb_module_utils", MODULE_UTILS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def mu() -> ModuleType:
    return _module_utils()


def _printed(capsys: pytest.CaptureFixture[str], mu: ModuleType, root: Path,
             dry_run: bool, rule: str = "dnsmasq") -> tuple[int, str]:
    """What the module's command line makes virtdeb print (run in this process)."""
    argv = mu.apply_argv("virtdeb", {"rules": [rule], "root": str(root)}, dry_run)
    code = cli.main(argv[1:])
    return code, capsys.readouterr().out


def test_reads_what_virtdeb_apply_json_prints(tmp_path: Path, mu: ModuleType,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    shutil.copytree(CASE, root, symlinks=True)

    code, out = _printed(capsys, mu, root, dry_run=True)
    check = mu.summarise(mu.parse_result(out))
    assert code == 0 and check["changed"] and check["changes"] > 0  # would change
    assert "journal_id" not in check and "+interface=lo" in check["diff"]
    assert not (root / "etc/dnsmasq.d/00_libvirtd.conf").exists()

    code, out = _printed(capsys, mu, root, dry_run=False)
    done = mu.summarise(mu.parse_result(out))
    assert code == 0 and done["changed"] and done["changes"] == check["changes"]
    assert (root / "var/lib/virtdeb/journal" / f"{done['journal_id']}.json").is_file()
    assert done["diff"] == check["diff"] and done["refused"] == []

    code, out = _printed(capsys, mu, root, dry_run=False)
    again = mu.summarise(mu.parse_result(out))
    assert code == 0 and not again["changed"] and again["changes"] == 0
    assert "journal_id" not in again


def test_a_failure_is_read_with_its_message(tmp_path: Path, mu: ModuleType,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _printed(capsys, mu, tmp_path, dry_run=False, rule="nosuchrule")
    failed = mu.summarise(mu.parse_result(out))
    assert code == 2 and not failed["changed"]
    assert failed["error"].startswith("unknown rule 'nosuchrule'")


def test_output_that_is_not_a_result_is_an_error(mu: ModuleType) -> None:
    with pytest.raises(mu.VirtdebOutputError, match="no JSON result"):
        mu.parse_result("Traceback (most recent call last):\n")
    with pytest.raises(mu.VirtdebOutputError, match="schema 2; this module reads schema 1"):
        mu.parse_result('{"schema": 2, "changed": true}')
    with pytest.raises(mu.VirtdebOutputError, match="schema None"):
        mu.parse_result("[]")


def test_a_host_without_virtdeb_gets_a_clear_message(tmp_path: Path, mu: ModuleType) -> None:
    message = mu.missing(str(tmp_path / "usr/bin/virtdeb"))
    assert message.startswith(f"{tmp_path}/usr/bin/virtdeb not found: virtdeb is not installed")
    (tmp_path / "virtdeb").write_text("")
    assert mu.missing(str(tmp_path / "virtdeb")) is None


def test_argv(mu: ModuleType) -> None:
    params = {"rules": ["bridge", "ssh"], "root": "/", "connect": None,
              "settings": {"bridge.allow": "br0 br1"}}
    assert mu.apply_argv("/usr/bin/virtdeb", params, dry_run=True) == [
        "/usr/bin/virtdeb", "apply", "--json", "--root", "/", "--set", "bridge.allow=br0 br1",
        "--dry-run", "--", "bridge", "ssh"]
