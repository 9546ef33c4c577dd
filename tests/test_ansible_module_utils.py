"""The Ansible module reads virtdeb's own closing lines: the two must stay in step.

ansible/plugins/module_utils/virtdeb.py parses what ``show_and_apply`` (the one way every
subcommand makes changes) prints; here the real function prints, on a scratch root, and
the module's parser reads it. The fleet test (tests/test_fleet.py) runs the module for
real over SSH.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path
from types import ModuleType

import pytest

from virtdeb.commands.options import show_and_apply
from virtdeb.effects.file import FileChange
from virtdeb.host import Host

# the collection is in the source tree, not in the package: not for autopkgtest's unit run
pytestmark = pytest.mark.integration

MODULE_UTILS = Path(__file__).resolve().parent.parent / "ansible/plugins/module_utils/virtdeb.py"


def _module_utils() -> ModuleType:
    spec = importlib.util.spec_from_file_location("virtdeb_module_utils", MODULE_UTILS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _printed(host: Host, changes: list[FileChange], dry_run: bool) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        show_and_apply(host, changes, "apply test", dry_run=dry_run, unchanged="all set")
    return out.getvalue()


def test_parse_what_show_and_apply_prints(tmp_path: Path) -> None:
    mu = _module_utils()
    host = Host(root=tmp_path)
    change = FileChange(rule="bridge", target="/etc/qemu/bridge.conf", before=None,
                        after=b"allow br0\n")

    assert mu.parse_apply(_printed(host, [], dry_run=False)) == (0, None, "")

    n, journal_id, diff = mu.parse_apply(_printed(host, [change], dry_run=True))
    assert (n, journal_id) == (1, None)
    assert diff == change.diff() and "+allow br0" in diff
    assert not (tmp_path / "etc/qemu/bridge.conf").exists()

    n, journal_id, diff = mu.parse_apply(_printed(host, [change], dry_run=False))
    assert n == 1 and journal_id and (tmp_path / "var/lib/virtdeb/journal"
                                      / f"{journal_id}.json").exists()
    assert diff == change.diff()
    assert (tmp_path / "etc/qemu/bridge.conf").read_bytes() == b"allow br0\n"


def test_unknown_output_is_an_error() -> None:
    mu = _module_utils()
    with pytest.raises(mu.VirtdebOutputError, match="none of its closing lines"):
        mu.parse_apply("Traceback (most recent call last):\n")


def test_argv() -> None:
    mu = _module_utils()
    params = {"rules": ["bridge", "ssh"], "root": "/", "connect": None,
              "settings": {"bridge.allow": "br0 br1"}}
    assert mu.apply_argv("/usr/bin/virtdeb", params, dry_run=True) == [
        "/usr/bin/virtdeb", "apply", "--root", "/", "--set", "bridge.allow=br0 br1",
        "--dry-run", "--", "bridge", "ssh"]
