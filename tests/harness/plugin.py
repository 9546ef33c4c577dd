"""The pytest plugin of the private daemons (registered in tests/conftest.py): their
fixtures, the ``integration`` marker for every test that uses one, and the teardown notes
of the private libvirtds in the run's summary (none is lost unseen).

Fixtures; every test that uses one of them is marked ``integration`` automatically:
- ``libvirtd`` (session): one daemon for the whole run; skipped with a reason when not
  root, when ip/unshare/nsenter/libvirtd/virtlogd/python3-libvirt are missing, when
  ``VIRTDEB_SKIP_LIBVIRTD`` is set, or when ``ip netns add`` is refused.
- ``libvirt_conn`` (function): a connection to the session daemon; after the test every
  domain, network and storage pool is destroyed and undefined and the helper veths
  are deleted (``reset``). Config files a test edits under scratch/etc/libvirt are NOT
  restored: such a test should use ``fresh_libvirtd``.
- ``fresh_libvirtd`` (function): a daemon of its own (about 0.2 s to start), e.g. for
  "autostart happens once per boot" behaviour or config edits.
- ``probed_caps`` (session): the qemu capabilities cache every CPU profile daemon of the
  run is edited from (tests/harness/cpucaps.py).

``daemon_or_skip(**kwargs)`` is the context the daemon fixtures use, for a test that
needs a daemon of its own made with arguments (e.g. ``before_start``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import cpucaps
from tests.harness.libvirtd import SESSION_NOTES, NetnsUnavailable, PrivateLibvirtd, skip_reason


@contextlib.contextmanager
def daemon_or_skip(**kwargs: Any) -> Iterator[PrivateLibvirtd]:
    """A started PrivateLibvirtd(**KWARGS), stopped after; the test is skipped (with the
    reason) where no private libvirtd can run."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    daemon = PrivateLibvirtd(**kwargs)
    try:
        daemon.start()
    except NetnsUnavailable as e:
        pytest.skip(f"network namespaces unavailable: {e}")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    """One private libvirtd for the session; use libvirt_conn for per-test cleanup."""
    with daemon_or_skip() as daemon:
        yield daemon


@pytest.fixture
def libvirt_conn(libvirtd: PrivateLibvirtd) -> Iterator[Any]:
    """A connection to the session daemon; all domains/networks/pools removed after."""
    conn = libvirtd.connect()
    try:
        yield conn
    finally:
        try:
            libvirtd.reset(conn)
        finally:
            conn.close()


@pytest.fixture
def fresh_libvirtd() -> Iterator[PrivateLibvirtd]:
    """A private libvirtd of the test's own, torn down after it."""
    with daemon_or_skip() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def probed_caps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The qemu capabilities cache every profile daemon of this run is edited from."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    return cpucaps.probe_caps(tmp_path_factory.mktemp("probed") / "caps")


_FIXTURES = {"libvirtd", "libvirt_conn", "fresh_libvirtd", "probed_caps"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SESSION_NOTES:
        terminalreporter.section("private libvirtd teardown notes")
        for note in SESSION_NOTES:
            terminalreporter.write_line(note)

