"""A FIFO where virtdeb reads a file must not hang it.

Opening a FIFO for reading waits for a writer: every read of a host file goes
through the one reader (fsio.read_bytes: O_NONBLOCK, regular files only).  For
virtdeb.conf, dpkg's status file and every file a rule reads, ``virtdeb doctor``,
``virtdeb apply`` and the postinst (``maint configure``) must answer with a one-line
error that names the file, never waiting for a writer.  A run that waits is ended by
SIGALRM after GUARD seconds, a failure.  How fast the answer comes is not timed here:
a run's time depends on the machine's load.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.harness import faults as fl
from virtdeb import cli, maint
from virtdeb.rules import ORDER

CONF = "/etc/virtdeb/virtdeb.conf"
STATUS = "/var/lib/dpkg/status"
ALL = frozenset({"doctor", "apply", "postinst"})
# Every file a rule reads -> which entry points read it on this fake root (with
# test:///default, whose network "default" exists: its template is not read, nor the
# state file by doctor; access's check reads /etc/group and /etc/passwd only; debug's
# and network's plans need nothing of libvirtd.conf and network.conf).
READS = {
    CONF: ALL,
    STATUS: ALL,
    "/etc/xen/xend-config.sxp": ALL,
    "/etc/libvirt/libvirtd.conf": {"doctor"},
    "/etc/libvirt/network.conf": {"doctor"},
    "/var/lib/virtdeb/network-default.json": {"apply", "postinst"},
    "/etc/dnsmasq.d/00_libvirtd.conf": ALL,
    "/etc/qemu/bridge.conf": ALL,
    "/etc/group": ALL,
    "/etc/gshadow": {"apply", "postinst"},
    "/etc/passwd": ALL,
    "/etc/adduser.conf": ALL,
    "/etc/libvirt/qemu.conf": ALL,
    "/var/lib/virtdeb/cpu/baseline.json": {"postinst"},
    "/proc/cpuinfo": {"postinst"},
}
GUARD = 60  # seconds: SIGALRM ends a hang as a test failure instead of a stuck run


class Hung(BaseException):  # not an Exception: maint catches those per rule
    pass


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Fail (not hang) after GUARD seconds."""
    def alarm(_sig: int, _frame: FrameType | None) -> None:
        raise Hung(f"still blocked after {GUARD} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(GUARD)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fl.build_root(tmp_path_factory.mktemp("fifo") / "pristine")
    # warm up what every run loads once per process (Augeas and its lenses, libvirt)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(["doctor", "--root", str(root), "-c", fl.URI])
    return root


def fifo_root(pristine: Path, tmp_path: Path, path: str) -> Path:
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    real = root / path.lstrip("/")
    if real.exists():
        real.unlink()
    real.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(real)
    return root


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with guarded(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


def assert_one_line_naming(path: str, lines: list[str]) -> None:
    assert lines, "no error at all"
    assert all(path in line for line in lines), lines
    assert not any("Traceback" in line for line in lines), lines


@pytest.mark.parametrize("path", sorted(READS))
def test_doctor(pristine: Path, tmp_path: Path, path: str) -> None:
    root = fifo_root(pristine, tmp_path, path)
    code, err = run_cli(["doctor", "--root", str(root), "-c", fl.URI])
    if "doctor" not in READS[path]:
        assert code in (0, 1) and not err, err
        return
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert_one_line_naming(path, err.splitlines())


@pytest.mark.parametrize("path", sorted(READS))
def test_apply(pristine: Path, tmp_path: Path, path: str) -> None:
    root = fifo_root(pristine, tmp_path, path)
    code, err = run_cli(["apply", "--root", str(root), "-c", fl.URI, "--dry-run",
                         *[r for r in ORDER if r != "cpu"]])
    if "apply" not in READS[path]:
        assert code == 0 and not err, err
        return
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert_one_line_naming(path, err.splitlines())


@pytest.mark.parametrize("path", sorted(READS))
def test_postinst(pristine: Path, tmp_path: Path, path: str,
                  caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    root = fifo_root(pristine, tmp_path, path)
    caplog.set_level(logging.WARNING)
    with guarded():
        code = maint.main(["configure", ""], root=str(root))
    printed = capsys.readouterr().err.splitlines()
    if path in (CONF, STATUS):  # virtdeb cannot work: the install fails, with one line
        assert code == 1
        assert len(printed) == 1, printed
        assert_one_line_naming(path, printed)
        return
    # a rule's file: that rule reports it on one line, the others go on
    assert code == 0, printed
    named = [r.getMessage() for r in caplog.records if path in r.getMessage()]
    assert bool(named) == ("postinst" in READS[path]), [r.getMessage() for r in caplog.records]
    assert all("\n" not in m and "Traceback" not in m for m in named), named
