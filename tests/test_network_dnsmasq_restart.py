"""The dnsmasq restart around the drop-in (rules/dnsmasq.py): only on a live root with
the daemon running; never run here (that would restart the host's dnsmasq)."""

from __future__ import annotations

from pathlib import Path

from virtdeb.effects.file import FileChange
from virtdeb.effects.service import RestartDnsmasq, dnsmasq_running, with_restart
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules.dnsmasq import Dnsmasq


class LiveLooking(Host):
    """A fake root that claims to be live: only for looking at the plan, never applied."""

    @property
    def is_live(self) -> bool:
        return True


def fake_daemon(root: Path, comm: str = "dnsmasq") -> None:
    (root / "run/dnsmasq").mkdir(parents=True)
    (root / "run/dnsmasq/dnsmasq.pid").write_text("4242\n")
    (root / "proc/4242").mkdir(parents=True)
    (root / "proc/4242/comm").write_text(comm + "\n")


def test_running_reads_pidfile_and_comm(tmp_path: Path) -> None:
    assert not dnsmasq_running(Host(root=tmp_path))
    fake_daemon(tmp_path, comm="sshd")
    assert not dnsmasq_running(Host(root=tmp_path))
    (tmp_path / "proc/4242/comm").write_text("dnsmasq\n")
    assert dnsmasq_running(Host(root=tmp_path))


def test_restart_wraps_the_file_change_on_a_live_root(tmp_path: Path) -> None:
    fake_daemon(tmp_path)
    change = FileChange("dnsmasq", "/etc/dnsmasq.d/00_libvirtd.conf", None, b"interface=lo\n")
    assert with_restart([change], Host(root=tmp_path), "dnsmasq") == [change]
    wrapped = with_restart([change], LiveLooking(root=tmp_path), "dnsmasq")
    assert wrapped == [RestartDnsmasq("dnsmasq", when="revert"), change,
                       RestartDnsmasq("dnsmasq", when="apply")]
    assert with_restart([], LiveLooking(root=tmp_path), "dnsmasq") == []


def test_no_restart_on_a_fake_root(tmp_path: Path) -> None:
    """Applying and reverting a plan with restarts on a fake root runs nothing."""
    fake_daemon(tmp_path)
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: dnsmasq\nStatus: install ok installed\nVersion: 2.90\n\n")
    host = Host(root=tmp_path)
    changes = Dnsmasq(host).plan()
    assert not any(isinstance(c, RestartDnsmasq) for c in changes)
    restarts = [RestartDnsmasq("dnsmasq", when="revert"), *changes,
                RestartDnsmasq("dnsmasq", when="apply")]
    Journal(host).apply(restarts, "test")
    _, messages = Journal(host).revert()
    assert messages[0] == messages[-1] == "dnsmasq: nothing to restart"
