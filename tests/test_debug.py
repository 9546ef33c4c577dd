"""``virtdeb debug`` and rule ``debug``: LIBVIRT_DEBUG=1 for a command, and
persistent log settings in Debian's real libvirtd.conf (fake root), revertible."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden import snapshot
from tests.harness.procs import PATH
from virtdeb.cli import main
from virtdeb.host import Host
from virtdeb.rules import Status
from virtdeb.rules.debug import DEFAULT_FILTERS, Debug

REPO = Path(__file__).resolve().parent.parent
LIBVIRTD_CONF = REPO / "tests/cases/debug/libvirtd.conf"
# /etc/libvirt/libvirtd.conf of libvirt-daemon-system 9.0.0-4+deb12u2 (dpkg status Conffiles).
DEBIAN_MD5 = "3711e13fba18964d157d8eeb67125a10"


def virtdeb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "virtdeb", *args], capture_output=True,
                          text=True, cwd=REPO, env={"PATH": PATH}, check=False)


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(LIBVIRTD_CONF, root / "etc/libvirt/libvirtd.conf")
    return root


def test_input_is_debians_pristine_conffile() -> None:
    assert hashlib.md5(LIBVIRTD_CONF.read_bytes()).hexdigest() == DEBIAN_MD5  # noqa: S324


def test_runs_command_with_libvirt_debug_and_its_exit_code() -> None:
    proc = virtdeb("debug", "--", "sh", "-c", 'echo "LIBVIRT_DEBUG=$LIBVIRT_DEBUG"; exit 7')
    assert proc.stdout == "LIBVIRT_DEBUG=1\n"
    assert proc.returncode == 7


def test_no_shell_between() -> None:
    proc = virtdeb("debug", "--", "echo", "$HOME;", "id")
    assert proc.stdout == "$HOME; id\n" and proc.returncode == 0


def test_missing_command_is_127() -> None:
    proc = virtdeb("debug", "--", "no-such-command-virtdeb")
    assert proc.returncode == 127 and "no-such-command-virtdeb" in proc.stderr


def test_enable_disable_revert_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    conf = root / "etc/libvirt/libvirtd.conf"
    assert main(["debug", "--enable", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines()
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changed == [f'+log_filters = "{DEFAULT_FILTERS}"',
                       '+log_outputs = "1:file:/var/log/libvirt/libvirtd.log"']
    assert conf.read_bytes().startswith(LIBVIRTD_CONF.read_bytes())
    assert main(["debug", "--enable", "--root", str(root)]) == 0
    assert "nothing to change" in capsys.readouterr().out
    finding = Debug(Host(root=root)).check()[0]
    assert finding.status is Status.NOTE and DEFAULT_FILTERS in finding.message
    assert main(["debug", "--disable", "--root", str(root)]) == 0
    assert conf.read_bytes() == LIBVIRTD_CONF.read_bytes()
    assert main(["revert", "--root", str(root)]) == 0  # undo --disable
    assert "log_filters" in conf.read_text().splitlines()[-2]
    assert main(["revert", "--root", str(root)]) == 0  # undo --enable
    assert snapshot(root) == before


def test_custom_filters_replace_in_place(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    assert main(["debug", "--enable", "1:qemu", "--root", str(root)]) == 0
    assert main(["debug", "--enable", "3:qemu 1:util", "--outputs", "2:stderr",
                 "--root", str(root)]) == 0
    lines = (root / "etc/libvirt/libvirtd.conf").read_text().splitlines()
    assert lines[-2:] == ['log_filters = "3:qemu 1:util"', 'log_outputs = "2:stderr"']


@pytest.mark.parametrize("bad", ['1:qemu" x', "9:qemu", "qemu", "1:qe mu;rm", "1:$(id)"])
def test_bad_filters_refused(tmp_path: Path, bad: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    assert main(["debug", "--enable", bad, "--root", str(root)]) == 2
    assert "nothing was changed" in capsys.readouterr().err
    assert snapshot(root) == before


def test_doctor_without_libvirtd_conf(tmp_path: Path) -> None:
    assert [f.status for f in Debug(Host(root=tmp_path)).check()] == [Status.NA]


def test_doctor_defaults_on_pristine_conf(tmp_path: Path) -> None:
    finding = Debug(Host(root=fake_root(tmp_path))).check()[0]
    assert finding.message == "libvirtd logging: libvirt's defaults"
