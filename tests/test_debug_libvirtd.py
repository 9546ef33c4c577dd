"""``virtdeb debug --enable`` as a real libvirtd reads it: a private daemon
(tests/harness/libvirtd.py) started with the libvirtd.conf virtdeb wrote logs debug
lines to the file its log_outputs names; after ``--disable`` a daemon started the same
way is quiet again.

The harness normally sends libvirtd's log to its own file through LIBVIRT_LOG_OUTPUTS,
which would win over the file's log_outputs: here that variable is empty (libvirt then
ignores it), so only libvirtd.conf decides.  Debian's real libvirtd.conf is the start.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness.libvirtd import PrivateLibvirtd, skip_reason
from virtdeb.cli import main
from virtdeb.rules.debug import DEFAULT_OUTPUTS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
DEBIAN_CONF = REPO / "tests/cases/debug/libvirtd.conf"
CONF = "etc/libvirt/libvirtd.conf"
LOG = DEFAULT_OUTPUTS.split(":file:", 1)[1].lstrip("/")  # var/log/libvirt/libvirtd.log
DEBUG = ": debug : "


def run_daemon(conf: Path) -> tuple[str, str]:
    """Start a private libvirtd with ``conf`` as libvirtd.conf, make a few calls, stop it.

    (the log file virtdeb's log_outputs names, as the daemon saw it; the daemon's stderr)
    """
    def install(scratch: Path) -> None:
        shutil.copyfile(conf, scratch / CONF)

    daemon = PrivateLibvirtd(before_start=install, keep_scratch=True,
                             daemon_env={"LIBVIRT_LOG_OUTPUTS": ""})
    try:
        daemon.start()
        conn = daemon.connect()
        try:
            conn.getLibVersion()
            conn.listAllNetworks()
            conn.listAllDomains()
        finally:
            conn.close()
    finally:
        daemon.stop()
    try:
        logged = daemon.scratch / LOG
        log = logged.read_text(errors="replace") if logged.exists() else ""
        out = (daemon.log_dir / "daemon.out").read_text(errors="replace")
    finally:
        shutil.rmtree(daemon.scratch, ignore_errors=True)
    return log, out


def test_libvirtd_logs_debug_lines_until_disabled(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "root"
    (root / CONF).parent.mkdir(parents=True)
    shutil.copyfile(DEBIAN_CONF, root / CONF)
    quiet_log, quiet_out = run_daemon(root / CONF)  # the control: Debian's file as shipped
    assert quiet_log.count(DEBUG) == 0 and quiet_out.count(DEBUG) == 0

    assert main(["debug", "--enable", "--root", str(root)]) == 0, capsys.readouterr().err
    log, out = run_daemon(root / CONF)
    lines = [line for line in log.splitlines() if DEBUG in line]
    assert len(lines) > 20, f"libvirtd wrote {len(lines)} debug lines to /{LOG}:\n{log[-2000:]}"
    assert any("virConnectGetLibVersion" in line or "virNetServer" in line
               for line in lines), lines[:20]

    assert main(["debug", "--disable", "--root", str(root)]) == 0, capsys.readouterr().err
    assert (root / CONF).read_bytes() == DEBIAN_CONF.read_bytes()
    after_log, after_out = run_daemon(root / CONF)
    assert after_log.count(DEBUG) == 0 and after_out.count(DEBUG) == 0, after_log[-2000:]
