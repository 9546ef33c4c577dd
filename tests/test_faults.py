"""Fault injection into the multi-file apply of every rule's file changes.

The apply (journal + every FileChange the registered rules plan on a root of
real Debian conffiles, tests/harness/faults.py) is interrupted at every file-system
step in turn:

(a) SIGKILL: a child process (``python3 -m tests.harness.faults kill N ROOT``) kills
    itself at step N;
(b) an exception raised at step N in this process (OSError EIO, and
    KeyboardInterrupt for a Ctrl-C);
(c) ENOSPC: the root on a small tmpfs (in a private mount namespace) filled so
    that each page of the apply's writes in turn is the one that fails.

After each interruption every file is byte for byte as before or as after
(never half-written; a temp file may only remain under its own name after
SIGKILL), then ``Journal.revert`` brings all back to before and a new apply
brings all to after.  Without FULL=1 the SIGKILL suite takes a spread subset of
the steps; the others always take every step.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import faults as fl
from virtdeb.errors import VirtdebError
from virtdeb.host import Host
from virtdeb.journal import Journal

FAST_KILLS = 16
FAST_RAISES = 20


class Root:
    """The pristine root, its states before and after, and what was planned on it."""

    def __init__(self, base: Path) -> None:
        self.src = fl.build_root(base / "pristine")
        self.before = fl.state(self.src)
        self.after = fl.after_state(self.src)
        self.plan = fl.file_changes(self.src)

    def copy(self, dest: Path) -> Path:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.src, dest, symlinks=True)
        return dest


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Root:
    r = Root(tmp_path_factory.mktemp("faults"))
    targets = sorted({c.target for c in r.plan.changes})
    fl.say(request, f"faults: {len(r.plan.changes)} file change(s) of rules {r.plan.rules()}"
                    f" on {len(targets)} file(s); skipped: {r.plan.skipped or 'none'};"
                    f" non-file changes left out here: {r.plan.non_file or 'none'}"
                    " (tests/test_faults_effects.py injects into those)")
    return r


def test_the_root_has_changes_to_interrupt(root: Root) -> None:
    assert len(root.plan.changes) >= 2, "a multi-file apply needs at least two files"
    assert root.after != root.before
    assert fl.temp_files(root.src) == []


def _summary(request: pytest.FixtureRequest, suite: str, points: int, failures: list[str],
             total: int | None = None) -> None:
    of = f" of {total} steps" if total is not None else ""
    fl.say(request, f"faults[{suite}]: {points} injected point(s){of},"
                    f" {points - len(failures)} passed")
    assert points > 0
    assert failures == [], "\n".join(failures[:20])


def test_sigkill_at_every_step(root: Root, tmp_path: Path,
                               request: pytest.FixtureRequest) -> None:
    probe = root.copy(tmp_path / "probe")
    proc = fl.run_child("count", str(probe))
    assert proc.returncode == 0, proc.stderr
    total = len(json.loads(proc.stdout)["steps"])
    failures = []
    points = fl.pick(total, FAST_KILLS)
    for n in points:
        work = root.copy(tmp_path / "work")
        proc = fl.run_child("kill", str(n), str(work))
        if proc.returncode != -signal.SIGKILL:
            failures.append(f"step {n}: child exited {proc.returncode}: {proc.stderr[-300:]}")
            continue
        failures += [f"step {n}: {p}" for p in fl.recover(work, root.before, root.after,
                                                              temps_ok=True)]
    _summary(request, "sigkill", len(points), failures, total)


def _raiser(exc: BaseException) -> Any:
    def action(step: str) -> None:
        raise exc
    return action


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "injected I/O error"), KeyboardInterrupt()],
                         ids=["EIO", "KeyboardInterrupt"])
def test_exception_at_every_step(root: Root, tmp_path: Path, exc: BaseException,
                                 request: pytest.FixtureRequest) -> None:
    injector = fl.Injector.get()
    probe = root.copy(tmp_path / "probe")
    plan = fl.file_changes(probe)
    with injector.armed(probe, 0, _raiser(exc)):
        Journal(Host(root=probe, uri=fl.URI)).apply(plan.changes, "faults")
    total = injector.count
    failures = []
    points = fl.pick(total, FAST_RAISES)
    for n in points:
        work = root.copy(tmp_path / "work")
        plan = fl.file_changes(work)
        escaped: BaseException | None = None
        with injector.armed(work, n, _raiser(exc)):
            try:
                Journal(Host(root=work, uri=fl.URI)).apply(plan.changes, "faults")
            except (VirtdebError, KeyboardInterrupt) as caught:
                escaped = caught
            except Exception as other:  # noqa: BLE001 - that is the finding
                escaped = other
                failures.append(f"step {n} ({injector.steps[n - 1]}): {type(other).__name__}"
                                f" escaped, not a VirtdebError: {other}")
        if escaped is None and fl.state(work) != root.after:
            # pathlib's mkdir(exist_ok=True) rightly ignores an error on an existing
            # directory; any other swallowed fault must still leave a complete apply
            failures.append(f"step {n} ({injector.steps[n - 1]}): the fault was swallowed"
                            " and the apply is incomplete")
        failures += [f"step {n}: stray temp file {t}" for t in fl.temp_files(work)]
        failures += [f"step {n} ({injector.steps[n - 1]}): {p}"
                     for p in fl.recover(work, root.before, root.after, temps_ok=False)]
    _summary(request, f"exception-{type(exc).__name__}", len(points), failures, total)


def _can_unshare() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount -t tmpfs in a private mount namespace)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, env=fl.CLEAN_ENV, check=False)
    if probe.returncode != 0:
        return f"unshare -m refused: {probe.stderr.decode().strip()}"
    return None


@pytest.mark.integration
def test_enospc_at_every_page(root: Root, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    reason = _can_unshare()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", fl.PY, "-m",
                           "tests.harness.faults", "enospc", str(root.src), str(mnt)],
                          cwd=fl.TOP, env=fl.CLEAN_ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not os.path.ismount(mnt), "the tmpfs must stay in the private namespace"
    levels = [json.loads(line) for line in proc.stdout.splitlines()]
    failed = [lv for lv in levels if lv["error"]]
    assert failed, "no level ran out of space: the tmpfs is too large"
    assert not levels[-1]["error"], "the last level must have room for the whole apply"
    for lv in failed:
        assert "No space left on device" in lv["error"], lv["error"]
    failures = [f"{lv['free_pages']} free page(s): {p}" for lv in levels for p in lv["problems"]]
    fl.say(request, f"faults[enospc]: {len(failed)} level(s) ran out of space,"
                    f" {len(levels) - len(failed)} had room")
    _summary(request, "enospc", len(levels), failures)
