"""Fault injection, the concurrent case: random interleavings on one root.

Each round (a seeded ``random.Random``: a failure names its seed and is
replayed with it) copies the root of real Debian conffiles that
tests/harness/faults.py builds, then starts at once, with random delays, real
processes: ``virtdeb apply`` of random rules (``bridge`` with a bridge of its
own), ``virtdeb revert``, dpkg triggers and the boot check (``maint``), some
with ``--wait 0`` so that they may be busy; one of them is SIGKILLed at a
random moment.  Afterwards:

- every process landed, was busy (exit 75), found nothing to revert, or was
  the one killed; nothing else (no traceback, no other error);
- every file is as before or as some journaled apply left it (its sha256 is
  the original's or the ``after_sha256`` of a journal record for it);
- journal ids are unique and every entry parses;
- reverting every entry not yet reverted, newest first, gives back the exact
  original bytes (and xattrs), and leaves no temporary file.

``make check`` runs ROUNDS rounds, ``make check-full`` (FULL=1) FULL_ROUNDS.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness import faults as fl
from virtdeb.errors import UsageError
from virtdeb.host import Host
from virtdeb.journal import Journal

ROUNDS = 3
FULL_ROUNDS = 24
OPS = 7
CHILD = str(fl.TOP / "tests" / "harness" / "lockchild.py")
FILE_RULES = ("xend", "dnsmasq", "qemu", "access", "bridge")
HELPER = "usr/lib/qemu/qemu-bridge-helper"
NOT_JOURNALED: tuple[str, ...] = ()  # every file virtdeb writes is journaled
TRIGGERS = ("/usr/lib/qemu/qemu-bridge-helper", "/etc/init.d/dnsmasq")

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the bridge rule sets security.capability (root)")


def outside(root: Path) -> dict[str, object]:
    snap: dict[str, object] = {k: v for k, v in fl.state(root).items()
                               if not k.startswith(NOT_JOURNALED)}
    helper = root / HELPER
    snap["xattrs"] = sorted((n, os.getxattr(helper, n)) for n in os.listxattr(helper))
    return snap


def op_argv(rng: random.Random, root: Path, n: int) -> tuple[str, list[str], dict[str, str]]:
    """One random operation: (kind, argv, environment)."""
    env = dict(fl.CLEAN_ENV)
    wait = rng.choice(["0", "60", "60"])
    kind = rng.choice(["apply", "apply", "apply-bridge", "apply-bridge", "revert", "trigger",
                       "boot"])
    if kind == "apply":
        rules = rng.sample(FILE_RULES, rng.randint(1, 3))
        return kind, [fl.PY, "-m", "virtdeb", "apply", "--root", str(root), "--connect", fl.URI,
                      "--wait", wait, *rules], env
    if kind == "apply-bridge":
        return kind, [fl.PY, "-m", "virtdeb", "apply", "--root", str(root), "--connect", fl.URI,
                      "--wait", wait, "--set", f"bridge.allow=vdbr{n}", "bridge"], env
    if kind == "revert":
        return kind, [fl.PY, "-m", "virtdeb", "revert", "--root", str(root), "--wait", wait], env
    env["VIRTDEB_LOCK_WAIT"] = wait
    if kind == "trigger":
        return kind, [fl.PY, CHILD, "maint", str(root), fl.URI, "triggered",
                      rng.choice(TRIGGERS)], env
    return kind, [fl.PY, CHILD, "maint", str(root), fl.URI, "boot"], env


def outcome_problem(kind: str, code: int, err: str, killed: bool) -> str | None:
    if killed and code == -signal.SIGKILL:
        return None
    if "Traceback" in err:
        return f"{kind}: traceback: {err[-800:]}"
    if code == 0:
        return None
    if code == 75 and "virtdeb: busy: pid " in err:
        return None
    if kind == "revert" and code == 2 and "nothing to revert" in err:
        return None
    return f"{kind}: exit {code}: {err[-500:]}"


def kill_while_holding(proc: subprocess.Popen[str], root: Path, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` s after it took the lock (its pid in the lock file),
    or at once if it ends or 20 s pass without it holding the lock."""
    lock = root / "var/lib/virtdeb/lock"
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            holder = lock.read_text().split(" ", 1)[0]
        except OSError:
            holder = ""
        if holder == str(proc.pid):
            time.sleep(delay)
            break
        time.sleep(0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)


def one_round(seed: int, pristine: Path, work: Path) -> tuple[list[str], dict[str, int]]:
    rng = random.Random(seed)
    root = work / f"round-{seed}"
    shutil.copytree(pristine, root, symlinks=True)
    marker = root / "var/lib/virtdeb/cpu/check-after-boot"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('{"time": "2026-12-01T00:00:00Z", "triggers": []}\n')
    original = outside(root)
    original_sha = {k: hashlib.sha256(v).hexdigest() for k, v in fl.state(root).items()
                    if isinstance(v, bytes)}
    ops = [op_argv(rng, root, n) for n in range(OPS)]
    # the victim waits for the lock (not --wait 0) and so holds it at some point
    waiting = [i for i, (_, argv, env) in enumerate(ops)
               if "0" not in (argv[argv.index("--wait") + 1] if "--wait" in argv else "",
                              env.get("VIRTDEB_LOCK_WAIT"))]
    victim = rng.choice(waiting or [0])
    procs = []
    killer = None
    for i, (kind, argv, env) in enumerate(ops):
        time.sleep(rng.uniform(0, 0.15))
        procs.append((kind, subprocess.Popen(argv, cwd=fl.TOP, env=env, text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        if i == victim:  # watch it from its start
            killer = threading.Thread(target=kill_while_holding,
                                      args=(procs[i][1], root, rng.uniform(0, 0.1)))
            killer.start()
    assert killer is not None
    killer.join()
    problems, counts = [], {"applied": 0, "reverted": 0, "busy": 0, "killed": 0}
    for i, (kind, proc) in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        problem = outcome_problem(kind, proc.returncode, err, i == victim)
        if problem:
            problems.append(f"seed {seed}: {problem}")
        if proc.returncode == -signal.SIGKILL:
            counts["killed"] += 1
        elif proc.returncode == 75:
            counts["busy"] += 1
        elif proc.returncode == 0 and ("applied " in out or "changed " in err):
            counts["applied"] += 1
        elif proc.returncode == 0 and "reverted journal entry" in out:
            counts["reverted"] += 1
    host = Host(root=root, uri=fl.URI)
    journal = Journal(host)
    try:
        entries = journal.entries()
    except UsageError as exc:
        return [f"seed {seed}: journal unreadable: {exc}"], counts
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        problems.append(f"seed {seed}: duplicate journal ids {ids}")
    counts["pending"] = sum(e.status == "pending" for e in entries)
    written = {}
    for entry in entries:
        for record in entry.records:
            if record.get("kind") in ("file", "shadowfile") and record.get("after_sha256"):
                written.setdefault(str(record["target"]).lstrip("/"), set()).add(
                    record["after_sha256"])
    for rel, data in fl.state(root).items():
        if not isinstance(data, bytes) or rel.startswith(NOT_JOURNALED):
            continue
        if rel.endswith(fl.TEMP_SUFFIX):
            continue  # the killed process's temp file: removed by the reverts below
        sha = hashlib.sha256(data).hexdigest()
        if sha != original_sha.get(rel) and sha not in written.get(rel, set()):
            problems.append(f"seed {seed}: {rel} is neither as before nor as an apply left it")
    reverted = 0
    while True:
        try:
            journal.revert()
        except UsageError:
            break
        except Exception as exc:  # noqa: BLE001 - that is the finding
            problems.append(f"seed {seed}: revert {reverted + 1}: {type(exc).__name__}: {exc}")
            break
        reverted += 1
    host.close()
    now = outside(root)
    if now != original:
        bad = sorted(k for k in set(now) | set(original) if now.get(k) != original.get(k))
        problems.append(f"seed {seed}: after {reverted} revert(s) not the original: {bad}")
    temps = fl.temp_files(root)
    if temps:
        problems.append(f"seed {seed}: temp files left after the reverts: {temps}")
    counts["entries"] = len(entries)
    shutil.rmtree(root, ignore_errors=True)
    return problems, counts


def test_random_interleavings(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pristine = fl.build_root(tmp_path / "pristine")
    rounds = FULL_ROUNDS if fl.FULL else ROUNDS
    seed0 = int(os.environ.get("VIRTDEB_FAULT_SEED", "0"))
    failures: list[str] = []
    totals: dict[str, int] = {}
    for seed in range(seed0, seed0 + rounds):
        problems, counts = one_round(seed, pristine, tmp_path)
        failures += problems
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    t = totals.get
    passed = rounds - len({f.split(":")[0] for f in failures})
    fl.say(request, f"faults[concurrent]: {rounds} round(s) of {OPS} processes (seeds"
                    f" {seed0}..{seed0 + rounds - 1}): {t('applied', 0)} applied,"
                    f" {t('reverted', 0)} reverted, {t('busy', 0)} busy, {t('killed', 0)}"
                    f" SIGKILLed holding the lock ({t('pending', 0)} entries left pending),"
                    f" {t('entries', 0)} journal entries; {passed} round(s) passed")
    assert failures == [], "\n".join(failures[:20])
