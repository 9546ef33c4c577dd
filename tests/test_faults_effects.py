"""Fault injection into every change, not only files: the libvirt network and the capability.

The apply is every registered rule's whole plan on the root of real Debian
conffiles (tests/harness/faults.py) against a real private libvirtd
(tests/harness/libvirtd.py, the session daemon of tests/harness/plugin.py): the network
``default`` defined,
started and marked autostart, the ``security.capability`` xattr of
qemu-bridge-helper and its marker, and every file.  The injector's steps are
the file-system steps (audit hook, now with ``os.setxattr``/``os.removexattr``)
and each libvirt call that changes the daemon (``networkDefineXML``,
``create``, ``setAutostart``, ``destroy``, ``undefine``, ``defineXML``; the real
call follows the step).  At step N:

(a) SIGKILL: a child process (``python3 -m tests.test_faults_effects kill N ROOT
    URI NETNS``) kills itself;
(b) an exception: EIO at a file step or libvirt's own error at a libvirt step,
    and KeyboardInterrupt anywhere, in this process.

After each: no other exception escapes than virtdeb's (or the Ctrl-C); every
file is as before or after and every network attribute (defined, active,
autostart) and the xattr as before or after; then (even N) revert -> exactly
before, apply -> after, revert -> before, or (odd N) apply from the
interrupted state -> after, and reverting every entry newest first -> exactly
before.  Without FULL=1 the steps taken are every non-file step and the one
after it, and a few spread steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import faults as fl
from virtdeb.effects import Change
from virtdeb.errors import UsageError, VirtdebError
from virtdeb.host import Host
from virtdeb.journal import Journal
from virtdeb.rules import load_all

pytestmark = pytest.mark.integration
HELPER = "usr/lib/qemu/qemu-bridge-helper"
LIBVIRT_CALLS = {"virConnect": ("networkDefineXML", "defineXML"),
                 "virNetwork": ("create", "setAutostart", "destroy", "undefine")}
FAST_SPREAD = 6


# -- the libvirt steps -----------------------------------------------------------
_wrapped = False


def wrap_libvirt(injector: fl.Injector) -> None:
    """Count each libvirt call that changes the daemon as a step of ``injector``."""
    global _wrapped
    if _wrapped:
        return
    import libvirt

    for cls_name, methods in LIBVIRT_CALLS.items():
        cls = getattr(libvirt, cls_name)
        for method in methods:
            setattr(cls, method, _stepping(injector, method, getattr(cls, method)))
    _wrapped = True


def _stepping(injector: fl.Injector, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, *args: Any) -> Any:
        if injector.root:
            injector._step(f"libvirt {name}")
        return real(self, *args)
    return call


def arm(root: Path) -> fl.Injector:
    injector = fl.Injector.get()
    wrap_libvirt(injector)
    return injector


# -- the plan and the state --------------------------------------------------------
def whole_plan(host: Host) -> list[Change]:
    changes: list[Change] = []
    for rule in load_all().values():
        changes.extend(rule(host).plan())
    return changes


def apply_all(host: Host, command: str = "faults effects") -> int:
    with Journal(host).locked(command):
        changes = whole_plan(host)
        Journal(host).apply(changes, command)
    return len(changes)


def networks(uri: str) -> dict[str, tuple[bool, bool]]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return {n.name(): (bool(n.isActive()), bool(n.autostart()))
                for n in conn.listAllNetworks()}
    finally:
        conn.close()


def full_state(root: Path, uri: str) -> dict[str, Any]:
    helper = root / HELPER
    return {"files": fl.state(root),
            "xattrs": sorted((n, os.getxattr(helper, n)) for n in os.listxattr(helper)),
            "networks": networks(uri)}


def mixed(now: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What is neither as before nor as after: files, the xattr, each network attribute."""
    problems = fl.mixed(now["files"], before["files"], after["files"], temps_ok=True)
    if now["xattrs"] not in (before["xattrs"], after["xattrs"]):
        problems.append(f"xattrs neither before nor after: {now['xattrs']}")
    absent = (False, False)  # an undefined network is neither active nor autostarted
    for name in sorted(set(now["networks"]) | set(before["networks"]) | set(after["networks"])):
        if name in now["networks"] and name not in before["networks"] and \
                name not in after["networks"]:
            problems.append(f"network {name}: defined, neither before nor after")
        got, b, a = (s["networks"].get(name, absent) for s in (now, before, after))
        for i, what in enumerate(("active", "autostart")):
            if got[i] not in (b[i], a[i]):
                problems.append(f"network {name}: {what} neither before nor after")
    return problems


def diff(now: dict[str, Any], want: dict[str, Any], label: str) -> list[str]:
    files = {k: v for k, v in now["files"].items() if not k.endswith(fl.TEMP_SUFFIX)}
    bad = sorted(k for k in set(files) | set(want["files"]) if files.get(k) != want["files"].get(k))
    out = [f"{label}: files differ: {', '.join(bad)}"] if bad else []
    if now["xattrs"] != want["xattrs"]:
        out.append(f"{label}: xattrs {now['xattrs']} != {want['xattrs']}")
    if now["networks"] != want["networks"]:
        out.append(f"{label}: networks {now['networks']} != {want['networks']}")
    return out


def revert_all(host: Host) -> int:
    n = 0
    while True:
        try:
            Journal(host).revert()
        except UsageError:
            return n
        n += 1


def recover(host: Host, n: int, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The checks after an interrupted apply; leaves the root and daemon as before."""
    root, uri = host.root, host.uri
    problems = mixed(full_state(root, uri), before, after)
    try:
        if n % 2 == 0:
            if any(e.status != "reverted" for e in Journal(host).entries()):
                Journal(host).revert()
            problems += diff(full_state(root, uri), before, "revert -> before")
            apply_all(host)
            problems += diff(full_state(root, uri), after, "apply -> after")
            revert_all(host)
        else:
            apply_all(host)
            problems += diff(full_state(root, uri), after, "apply from there -> after")
            revert_all(host)
        problems += diff(full_state(root, uri), before, "revert all -> before")
        left = fl.temp_files(root)
        if left:
            problems.append(f"temp files left after the reverts: {left}")
    except VirtdebError as exc:
        problems.append(f"{type(exc).__name__}: {exc}")
    return problems


# -- the suites ----------------------------------------------------------------------
class Setup:
    def __init__(self, base: Path, uri: str, netns: str) -> None:
        self.uri, self.netns = uri, netns
        self.src = fl.build_root(base / "pristine")
        self.base = base

    def fresh(self) -> Host:
        work = self.base / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.src, work, symlinks=True)
        return Host(root=work, uri=self.uri, netns=self.netns)


@pytest.fixture(scope="module")
def setup(libvirtd: Any, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    if os.geteuid() != 0:
        pytest.skip("the capability xattr needs root")
    libvirtd.reset()
    return Setup(tmp_path_factory.mktemp("faults-effects"), libvirtd.uri, libvirtd.netns)


def states(setup: Setup) -> tuple[dict[str, Any], dict[str, Any], list[str], list[str]]:
    """(before, after, steps, kinds of the plan) of one uninterrupted apply, traced."""
    host = setup.fresh()
    before = full_state(host.root, host.uri)
    injector = arm(host.root)
    with injector.armed(host.root, 0, lambda _s: None):
        apply_all(host)
    steps = list(injector.steps)
    after = full_state(host.root, host.uri)
    kinds = sorted({str(r.get("kind")) for e in Journal(host).entries() for r in e.records})
    revert_all(host)
    assert full_state(host.root, host.uri) == before, "the traced apply did not revert"
    return before, after, steps, kinds


def points(steps: list[str]) -> list[int]:
    if fl.FULL:
        return list(range(1, len(steps) + 1))
    special = [i + 1 for i, s in enumerate(steps) if s.startswith(("libvirt", "os.setxattr"))]
    chosen = set(special) | {i + 1 for i in special if i < len(steps)}
    return sorted(chosen | set(fl.pick(len(steps), FAST_SPREAD)))


def test_the_plan_has_every_kind(setup: Setup, request: pytest.FixtureRequest) -> None:
    before, after, steps, kinds = states(setup)
    assert {"file", "file-capability", "libvirt-network"} <= set(kinds), kinds
    assert after["networks"] == {"default": (True, True)}
    assert before["networks"] == {}
    libvirt_steps = [s for s in steps if s.startswith("libvirt")]
    assert libvirt_steps == ["libvirt networkDefineXML", "libvirt create",
                             "libvirt setAutostart"], libvirt_steps
    assert any(s.startswith("os.setxattr") for s in steps)
    fl.say(request, f"faults[effects]: plan of kinds {kinds}, {len(steps)} steps, of which"
                    f" libvirt {len(libvirt_steps)}, xattr"
                    f" {sum(s.startswith('os.setxattr') for s in steps)}")


def test_sigkill_at_every_effect_step(setup: Setup, request: pytest.FixtureRequest) -> None:
    before, after, steps, _ = states(setup)
    failures = []
    chosen = points(steps)
    for n in chosen:
        host = setup.fresh()
        proc = subprocess.run([fl.PY, "-m", "tests.test_faults_effects", "kill", str(n),
                               str(host.root), setup.uri, setup.netns], cwd=fl.TOP,
                              env=fl.CLEAN_ENV, capture_output=True, text=True, check=False,
                              timeout=300)
        if proc.returncode != -signal.SIGKILL:
            failures.append(f"step {n}: child exited {proc.returncode}: {proc.stderr[-300:]}")
            revert_all(host)
            continue
        failures += [f"step {n} ({steps[n - 1]}): {p}" for p in recover(host, n, before, after)]
    fl.say(request, f"faults[effects-sigkill]: {len(chosen)} injected point(s) of"
                    f" {len(steps)} steps, {len(chosen) - len({f.split(':')[0] for f in failures})}"
                    " passed")
    assert failures == [], "\n".join(failures[:20])


def _raiser(kind: str) -> Callable[[str], None]:
    def action(step: str) -> None:
        if kind == "KeyboardInterrupt":
            raise KeyboardInterrupt
        if step.startswith("libvirt"):
            import libvirt

            raise libvirt.libvirtError(f"injected failure of {step}")
        raise OSError(errno.EIO, "injected I/O error")
    return action


@pytest.mark.parametrize("kind", ["error", "KeyboardInterrupt"])
def test_exception_at_every_effect_step(setup: Setup, kind: str,
                                        request: pytest.FixtureRequest) -> None:
    before, after, steps, _ = states(setup)
    failures = []
    chosen = points(steps)
    for n in chosen:
        host = setup.fresh()
        injector = arm(host.root)
        with injector.armed(host.root, n, _raiser(kind)):
            try:
                apply_all(host)
            except (VirtdebError, KeyboardInterrupt):
                pass
            except Exception as other:  # noqa: BLE001 - that is the finding
                failures.append(f"step {n} ({steps[n - 1]}): {type(other).__name__} escaped,"
                                f" not a VirtdebError: {other}")
        failures += [f"step {n} ({steps[n - 1]}): {p}" for p in recover(host, n, before, after)]
    fl.say(request, f"faults[effects-{kind}]: {len(chosen)} injected point(s) of"
                    f" {len(steps)} steps, {len(chosen) - len({f.split(':')[0] for f in failures})}"
                    " passed")
    assert failures == [], "\n".join(failures[:20])


def child(argv: list[str]) -> int:
    """``kill N ROOT URI NETNS``: the whole apply, SIGKILL at step N."""
    n, root, uri, netns = int(argv[0]), Path(argv[1]), argv[2], argv[3]
    host = Host(root=root, uri=uri, netns=netns)
    injector = arm(root)
    with injector.armed(root, n, fl.sigkill):
        apply_all(host)
    print(json.dumps({"steps": injector.steps}))
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[2:]))
