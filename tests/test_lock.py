"""virtdeb's one lock (virtdeb/lock.py), as an administrator meets it.

Real ``virtdeb`` processes started at once on one root: eight ``apply --set
bridge.allow=brN bridge``, then the same with a dpkg trigger and the boot
check in the mix; a held lock makes a second virtdeb wait (one line naming the
holder) and then go on or exit 75 "busy"; a trigger started by the holder
(through ``Host.run``, as dpkg started by a locked virtdeb would run it) goes on
under the holder's lock, and one that is not the holder's descendant waits.
Real dpkg in a chroot: tests/test_lock_dpkg.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.golden import snapshot
from virtdeb import lock
from virtdeb.host import CLEAN_PATH, Host
from virtdeb.journal import Journal

TOP = Path(__file__).resolve().parent.parent
PY = "/usr/bin/python3"
CHILD = str(TOP / "tests" / "harness" / "lockchild.py")
URI = "test:///default"
HELPER = "usr/lib/qemu/qemu-bridge-helper"
CONF = "etc/qemu/bridge.conf"
BRIDGE_CONF = b"# qemu-bridge-helper access list\nallow virbr0\n"
ENV = {"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
       "HOME": "/root"}
APPLIED = re.compile(r"applied \d+ change\(s\) as journal entry (\S+);")
TRIGGER = "/usr/lib/qemu/qemu-bridge-helper"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the bridge rule sets security.capability (root)")


def make_root(tmp_path: Path, config: str = "") -> Path:
    root = tmp_path / "root"
    helper = root / HELPER
    helper.parent.mkdir(parents=True)
    helper.write_bytes(b"\x7fELF fake qemu-bridge-helper\n")
    helper.chmod(0o755)
    (root / CONF).parent.mkdir(parents=True)
    (root / CONF).write_bytes(BRIDGE_CONF)
    if config:
        (root / "etc/virtdeb").mkdir(parents=True)
        (root / "etc/virtdeb/virtdeb.conf").write_text(config)
    return root


def outside_state(root: Path) -> dict[str, object]:
    """Every file but the journal and the lock, and the helper's xattrs."""
    snap: dict[str, object] = dict(snapshot(root))
    helper = root / HELPER
    snap["xattrs"] = sorted((n, os.getxattr(helper, n)) for n in os.listxattr(helper))
    return snap


def virtdeb(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "virtdeb", *args, "--root", str(root)], cwd=TOP,
                            env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def maint(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, CHILD, "maint", str(root), URI, *args], env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: dict[str, subprocess.Popen[str]]) -> dict[str, tuple[int, str, str]]:
    return {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}


def allowed(root: Path) -> list[str]:
    return [line.split()[1] for line in (root / CONF).read_text().splitlines()
            if line.startswith("allow ")]


def revert_all(root: Path) -> int:
    """Revert every entry, newest first, through the command; how many."""
    n = 0
    while True:
        proc = subprocess.run([PY, "-m", "virtdeb", "revert", "--root", str(root)], cwd=TOP,
                              env=ENV, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            assert "nothing to revert" in proc.stderr, proc.stderr
            return n
        n += 1


def check_landed(root: Path, results: dict[str, tuple[int, str, str]]) -> tuple[list[str],
                                                                                 list[str]]:
    """(landed, busy) of the applies among ``results``; every other outcome fails."""
    landed, busy = [], []
    for name, (code, out, err) in results.items():
        if code == 0:
            match = APPLIED.search(out)
            assert match, f"{name}: {out}{err}"
            landed.append(name)
        else:
            assert code == lock.BUSY_EXIT, f"{name}: exit {code}: {err}"
            assert err.strip().splitlines()[-1].startswith("virtdeb: busy: pid "), err
            assert "nothing was changed" in err
            busy.append(name)
    return landed, busy


@pytest.mark.parametrize("wait", ["60", "0"])
def test_eight_concurrent_applies(tmp_path: Path, wait: str) -> None:
    root = make_root(tmp_path)
    original = outside_state(root)
    procs = {f"br{i}": virtdeb(root, "apply", "--connect", URI, "--wait", wait,
                               "--set", f"bridge.allow=br{i}", "bridge") for i in range(1, 9)}
    results = finish(procs)
    landed, busy = check_landed(root, results)
    if wait == "60":
        assert sorted(landed) == sorted(procs), "with a long wait every apply lands"
    assert landed, "one apply at least holds the lock first"
    # no lost update: every bridge reported as applied is there, no other
    assert sorted(allowed(root)) == sorted(["virbr0", *landed])
    entries = Journal(Host(root=root, uri=URI)).entries()
    ids = [e.id for e in entries]
    printed = [APPLIED.search(results[n][1]).group(1) for n in landed]  # type: ignore[union-attr]
    assert len(set(ids)) == len(ids) == len(landed), ids
    assert sorted(printed) == sorted(ids)
    for name in busy:  # a busy run waited at most its --wait and named the holder
        assert "waiting up to 0 s for the lock: pid " in results[name][2]
    assert revert_all(root) == len(landed)
    assert outside_state(root) == original
    print(f"lock: {len(landed)} landed, {len(busy)} busy (--wait {wait}); ids unique;"
          " reverted to the original bytes")


def test_applies_with_a_trigger_and_the_boot_check(tmp_path: Path) -> None:
    # the trigger re-applies the capability and allows br0 (the admin allowed it);
    # the boot check finds a pending microcode marker
    root = make_root(tmp_path, "[virtdeb]\nallow_edit = bridge.conf\n[bridge]\nallow = br0\n")
    marker = root / "var/lib/virtdeb/cpu/check-after-boot"
    marker.parent.mkdir(parents=True)
    marker.write_text('{"time": "2026-12-01T00:00:00Z", "triggers": []}\n')
    original = outside_state(root)
    procs: dict[str, subprocess.Popen[str]] = {}
    for i in range(1, 7):
        procs[f"br{i}"] = virtdeb(root, "apply", "--connect", URI, "--wait", "60",
                                  "--set", f"bridge.allow=br{i}", "bridge")
        if i == 2:
            procs["trigger"] = maint(root, "triggered", TRIGGER)
        if i == 4:
            procs["boot"] = maint(root, "boot")
    results = finish(procs)
    for name in ("trigger", "boot"):
        code, out, err = results.pop(name)
        assert code == 0 and "busy" not in err and "Traceback" not in err, f"{name}: {err}"
    landed, busy = check_landed(root, results)
    assert not busy and len(landed) == 6
    assert sorted(allowed(root)) == sorted(["virbr0", "br0", *landed])
    entries = Journal(Host(root=root, uri=URI)).entries()
    commands = [e.command for e in entries]
    assert commands.count("postinst triggered bridge") <= 1
    assert commands.count("apply bridge") == len(landed)
    assert len({e.id for e in entries}) == len(entries)
    assert revert_all(root) == len(entries)
    assert outside_state(root) == original


def test_busy_names_the_holder_and_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    original = snapshot(root)
    host = Host(root=root, uri=URI)
    with lock.hold(host.path(lock.LOCK), "test holder"):
        snap = snapshot(root)
        proc = virtdeb(root, "apply", "--connect", URI, "--wait", "0.5", "bridge")
        code, out, err = proc.wait(timeout=60), *proc.communicate()
        env_proc = virtdeb(root, "apply", "--connect", URI, "bridge",
                           env={**ENV, lock.WAIT_ENV: "0.2"})
        env_code, _, env_err = env_proc.wait(timeout=60), *env_proc.communicate()
        bad = virtdeb(root, "apply", "--connect", URI, "bridge", env={**ENV, lock.WAIT_ENV: "soon"})
        bad_code, _, bad_err = bad.wait(timeout=60), *bad.communicate()
        assert snapshot(root) == snap
    lines = err.strip().splitlines()
    assert lines == [
        f"virtdeb: waiting up to 0.5 s for the lock: pid {os.getpid()} (test holder)"
        f" holds {lock.LOCK}",
        f"virtdeb: busy: pid {os.getpid()} (test holder) still holds {lock.LOCK} after 0.5 s;"
        " nothing was changed: run the command again when it is done (wait longer with"
        f" --wait SECONDS or {lock.WAIT_ENV})"], err
    assert code == lock.BUSY_EXIT and out == ""
    assert env_code == lock.BUSY_EXIT and "after 0.2 s" in env_err
    assert bad_code == 2 and f"{lock.WAIT_ENV}='soon': give a number of seconds" in bad_err
    assert {k for k in snapshot(root)} - set(original) <= {"var/lib/virtdeb/lock"}
    assert not (root / "var/lib/virtdeb/journal").exists()


def test_a_waiting_virtdeb_goes_on_when_the_holder_is_done(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    with lock.hold(Host(root=root).path(lock.LOCK), "test holder"):
        proc = virtdeb(root, "apply", "--connect", URI, "--wait", "60", "bridge",
                       "--set", "bridge.allow=br7")
        time.sleep(1.5)
        assert proc.poll() is None, "it must wait while the lock is held"
    code, _, err = proc.wait(timeout=60), *proc.communicate()
    assert code == 0, err
    assert err.count("waiting up to 60 s for the lock") == 1
    assert "br7" in allowed(root)


def test_revert_and_dry_run_and_doctor(tmp_path: Path) -> None:
    """revert waits like apply; --dry-run, doctor and revert --list never wait."""
    root = make_root(tmp_path)
    done = subprocess.run([PY, "-m", "virtdeb", "apply", "--root", str(root), "--connect", URI,
                           "--set", "bridge.allow=br1", "bridge"], cwd=TOP, env=ENV,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with lock.hold(Host(root=root).path(lock.LOCK), "test holder"):
        start = time.monotonic()
        readers = [virtdeb(root, "apply", "--connect", URI, "--dry-run", "bridge",
                           "--set", "bridge.allow=br2"),
                   virtdeb(root, "doctor", "--connect", URI, "bridge"),
                   virtdeb(root, "revert", "--list")]
        for p in readers:
            p.wait(timeout=60)
            assert "waiting" not in p.communicate()[1]
        assert time.monotonic() - start < 20
        rev = virtdeb(root, "revert", "--wait", "0")
        assert rev.wait(timeout=60) == lock.BUSY_EXIT
    assert allowed(root) == ["virbr0", "br1"]


def test_a_trigger_run_by_the_holder_does_not_wait_for_it(tmp_path: Path) -> None:
    """The nested case: a command the holder runs (dpkg, and its trigger) carries the token."""
    root = make_root(tmp_path, "[virtdeb]\nallow_edit = bridge.conf\n[bridge]\nallow = br0\n")
    host = Host(root=root, uri=URI)
    with lock.hold(host.path(lock.LOCK), "virtdeb apply (test)"):
        start = time.monotonic()
        proc = host.run([PY, CHILD, "maint", str(root), URI, "triggered", TRIGGER],
                        check=False)
        nested = time.monotonic() - start
        # the control: the same trigger, not started by the holder, waits and gives up
        control = subprocess.run([PY, CHILD, "maint", str(root), URI, "triggered", TRIGGER],
                                 env={**ENV, lock.WAIT_ENV: "1"}, capture_output=True,
                                 text=True, check=False, timeout=120)
    assert proc.returncode == 0 and "waiting" not in proc.stderr, proc.stderr
    assert nested < 30
    assert "allow br0" in (root / CONF).read_text()
    commands = [e.command for e in Journal(host).entries()]
    assert commands == ["postinst triggered bridge"]
    assert control.returncode == 0, control.stderr  # never fails dpkg
    assert f"waiting up to 1 s for the lock: pid {os.getpid()} (virtdeb apply (test))" \
        in control.stderr
    assert "busy" in control.stderr
    assert "the trigger did not re-apply its rules: run virtdeb apply bridge" in control.stderr


def test_the_token_alone_is_not_enough(tmp_path: Path) -> None:
    """A process that has the holder's token but is not its descendant waits."""
    root = make_root(tmp_path, "[bridge]\nallow = br0\n")
    holder = subprocess.Popen([PY, CHILD, "hold", str(root)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        pid, token, _ = holder.stdout.readline().split(" ", 2)
        assert int(pid) == holder.pid
        proc = subprocess.run([PY, CHILD, "maint", str(root), URI, "triggered", TRIGGER],
                              env={**ENV, lock.ENV: token, lock.WAIT_ENV: "0.5"},
                              capture_output=True, text=True, check=False, timeout=120)
        stale = subprocess.run([PY, CHILD, "maint", str(root), URI, "triggered", TRIGGER],
                               env={**ENV, lock.ENV: f"{pid}.0000", lock.WAIT_ENV: "0.5"},
                               capture_output=True, text=True, check=False, timeout=120)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    for p in (proc, stale):
        assert p.returncode == 0
        assert f"pid {pid} (lockchild hold)" in p.stderr and "busy" in p.stderr, p.stderr
    assert not (root / "var/lib/virtdeb/journal").exists()


def test_a_killed_holder_releases_the_lock(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    holder = subprocess.Popen([PY, CHILD, "hold", str(root)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    holder.stdout.readline()
    holder.kill()
    holder.wait(timeout=60)
    proc = virtdeb(root, "apply", "--connect", URI, "--wait", "0", "bridge",
                   "--set", "bridge.allow=br3")
    assert proc.wait(timeout=60) == 0, proc.communicate()[1]
    if holder.stdin is not None:
        holder.stdin.close()


def test_leftover_temp_files_are_removed_by_apply_and_revert(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    etc_qemu = root / "etc/qemu"
    left = etc_qemu / ".bridge.conf.virtdeb-new"
    other = etc_qemu / ".bridge.conf.orig"  # not virtdeb's: stays
    left.write_text("half a write\n")
    other.write_text("admin's\n")
    link = etc_qemu / ".x.virtdeb-new"
    link.symlink_to("/etc/passwd")  # not a regular file: stays
    done = subprocess.run([PY, "-m", "virtdeb", "apply", "--root", str(root), "--connect", URI,
                           "--set", "bridge.allow=br1", "bridge"], cwd=TOP, env=ENV,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not left.exists() and other.exists() and link.is_symlink()
    # a killed write of the revert's own target directory, and one of the journal's
    left.write_text("half a write\n")
    journal_left = root / "var/lib/virtdeb/journal/.20260101T000000-1.json.virtdeb-new"
    journal_left.write_text("{")
    assert revert_all(root) == 1
    assert not left.exists() and not journal_left.exists()
    assert (root / CONF).read_bytes() == BRIDGE_CONF

