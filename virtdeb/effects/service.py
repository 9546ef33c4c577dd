"""The ``restart-dnsmasq`` effect: restart the system dnsmasq (running, or failed under
systemd) around a change of its drop-in (``invoke-rc.d dnsmasq restart``), only on a live
root."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from virtdeb import fsio
from virtdeb.effects import Change, Record
from virtdeb.errors import VirtdebError
from virtdeb.host import Host

# -- restarting the running daemon ---------------------------------------------
PIDFILE = "/run/dnsmasq/dnsmasq.pid"


def dnsmasq_running(host: Host) -> bool:
    """Whether the system dnsmasq daemon runs (its pidfile names a live dnsmasq)."""
    try:
        pid = int((fsio.read_bytes(host.path(PIDFILE), PIDFILE) or b"").strip())
        comm = fsio.read_bytes(host.path(f"/proc/{pid}/comm"), f"/proc/{pid}/comm")
    except (VirtdebError, ValueError):
        return False
    return (comm or b"").strip() == b"dnsmasq"


def dnsmasq_failed(host: Host) -> bool:
    """Whether systemd (PID 1 of the live root) has ``dnsmasq.service`` failed.

    On a booted system dnsmasq's postinst starts the daemon before virtdeb's trigger
    writes the drop-in; with a libvirt network up the daemon then finds port 53 taken
    ("failed to create listening socket for port 53: Address already in use", seen on a
    booted trixie, tests/test_booted.py) and stays failed until restarted.
    """
    if not host.is_live or not host.path("/run/systemd/system").is_dir():
        return False
    try:
        proc = host.run(["systemctl", "is-failed", "--quiet", "dnsmasq.service"], check=False)
    except VirtdebError:
        return False
    return proc.returncode == 0


def _wanted(host: Host) -> bool:
    """Whether a change of the drop-in should restart dnsmasq: it runs, or it failed."""
    return host.is_live and (dnsmasq_running(host) or dnsmasq_failed(host))


@dataclass
class RestartDnsmasq(Change):
    """``invoke-rc.d dnsmasq restart`` after an apply (``when="apply"``) or after the
    revert of the file changes it follows (``when="revert"``, placed before them).

    Only on a live root, and only when the daemon runs or systemd has it failed; never in
    tests on fake roots.
    """

    kind: ClassVar[str] = "restart-dnsmasq"
    rule: str
    target: str = "dnsmasq"
    when: str = "apply"

    def diff(self) -> str:
        return f"invoke-rc.d dnsmasq restart (after {self.when}, if it runs)\n"

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "when": self.when}

    def apply(self, host: Host) -> None:
        if self.when == "apply":
            _restart(host)

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        if record.get("when") == "revert" and _restart(host):
            return "dnsmasq: restarted"
        return "dnsmasq: nothing to restart"


def _restart(host: Host) -> bool:
    if not _wanted(host):
        return False
    host.run(["invoke-rc.d", "dnsmasq", "restart"])
    return True


def with_restart(changes: list[Change], host: Host, rule: str) -> list[Change]:
    """``changes`` wrapped in dnsmasq restarts when the live daemon runs (or failed)."""
    if not changes or not _wanted(host):
        return changes
    return [RestartDnsmasq(rule, when="revert"), *changes, RestartDnsmasq(rule)]
