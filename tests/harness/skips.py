"""Skips are counted: a pytest plugin that fails the run on a skip nobody expected.

With ``VIRTDEB_COUNT_SKIPS=1`` (what ``make check`` sets for each suite's pytest), every
skipped test must match an entry of ``EXPECTED``: its test file (or ``file::test``) and
a pattern of its reason. Any other skip (a missing tool, a broken import hidden behind
``importorskip``, a daemon that would not start) turns the run into a failure that names
the test and its reason. The summary lists each expected skip with why it is expected.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

ENV = "VIRTDEB_COUNT_SKIPS"

# (test file or file::test, reason pattern, why this skip is right)
EXPECTED: list[tuple[str, str, str]] = [
    ("tests/test_fleet.py", r"", "the fleet runs on the host (make fleet), where a skip is"
     " a failure; a suite's chroot has no ansible and no fleet images"),
    ("tests/test_booted.py", r"runs under `make booted`", "the booted story boots systemd in"
     " systemd-nspawn on the host (make booted), where a skip is a failure"),
    ("tests/test_demo_story.py::test_the_booted_demo_reboots_and_the_boot_check_names_the_guest",
     r"runs under `make booted`", "the booted demo boots trixie in systemd-nspawn on the"
     " host (make booted), where a missing image is a failure"),
    ("tests/test_network.py::test_firewall_backend_through_libvirts_lens", r"libvirt < 10\.4",
     "bookworm's libvirt 9.0 has no network.conf and no Libvirtd_network lens"),
    ("tests/test_guestnet.py::test_network_conf_backend_and_bad_values", r"libvirt < 10\.4",
     "bookworm's libvirt 9.0 has no network.conf and no Libvirtd_network lens"),
    ("tests/test_guestnet.py::test_plan_switches_to_iptables_next_to_docker",
     r"libvirt < 10\.4", "bookworm's libvirt 9.0 has no network.conf to choose a backend in"),
    ("tests/test_guestnet_libvirtd.py::test_nftables_backend_and_the_fix",
     r"libvirt < 10\.4", "bookworm's libvirt 9.0 has no nftables backend"),
]

_seen: list[tuple[str, str]] = []


def _reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def expected(nodeid: str, reason: str) -> str | None:
    """Why the skip of NODEID for REASON is expected, or None when it is not."""
    for where, pattern, why in EXPECTED:
        if (nodeid == where or nodeid.startswith(where + "::")
                or nodeid.startswith(where + "[")) and re.search(pattern, reason):
            return why
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if os.geteuid() != 0 and item.get_closest_marker("root") is not None:
        pytest.skip("needs root (marker root): make unit as another user deselects it")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _seen.append((report.nodeid, _reason(report)))


def unexpected() -> list[tuple[str, str]]:
    return [(n, r) for n, r in _seen if expected(n, r) is None]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(ENV) == "1" and unexpected() and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if os.environ.get(ENV) != "1" or not _seen:
        return
    terminalreporter.section("skips, counted")
    for nodeid, reason in _seen:
        why = expected(nodeid, reason)
        verdict = f"expected: {why}" if why else "UNEXPECTED: fails the run"
        terminalreporter.write_line(f"{nodeid}: {reason} ({verdict})")
    bad = unexpected()
    terminalreporter.write_line(f"{len(_seen) - len(bad)} expected skips, {len(bad)} unexpected")
