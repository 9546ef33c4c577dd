"""Helpers of the safety suites: a fake root of real Debian conffiles, every rule's
file changes on it, snapshots, and a fault injector.

The root (:func:`build_root`) holds the conffiles virtdeb edits, as Debian ships
them: ``/etc/libvirt/{qemu,libvirtd}.conf`` of libvirt 9.0.0 (kept under tests/cases,
never read from this machine); Xen 4.2's ``xend-config.sxp``; a ``bridge.conf``;
``/etc/group``, ``/etc/passwd``; a dpkg
status naming the packages the rules look for; and ``/etc/virtdeb/virtdeb.conf``
that enables everything the schema offers (:func:`enabling_config`).

:func:`file_changes` asks every registered rule for its plan on that root
(``test:///default``) and keeps the :class:`FileChange` instances: the suites
cover every rule's file changes, also the rules added later, without naming them.

The fault injector is one audit hook (``sys.addaudithook``) plus a wrapper of
``os.fsync``: every file-system step under the root (open, mkdir, chmod, chown,
rename, remove, fsync) is counted, and at step N it raises or SIGKILLs the
process.  It injects faults; it does not replace the code under test.
``python3 -m tests.harness.faults kill N ROOT`` is the child of the SIGKILL suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parents[2]
if str(TOP) not in sys.path:
    sys.path.insert(0, str(TOP))

from tests.golden import snapshot  # noqa: E402
from tests.harness.procs import PATH  # noqa: E402
from virtdeb.config import FOREIGN_FILES, schema  # noqa: E402
from virtdeb.effects.file import FileChange  # noqa: E402
from virtdeb.errors import LibvirtError, VirtdebError  # noqa: E402
from virtdeb.host import Host  # noqa: E402
from virtdeb.journal import Journal  # noqa: E402
from virtdeb.rules import load_all  # noqa: E402

PY = "/usr/bin/python3"
CLEAN_ENV = {"PATH": PATH,
             "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/root"}
URI = "test:///default"
CONFIG = "/etc/virtdeb/virtdeb.conf"
# libvirt-daemon-system 9.0.0's qemu.conf and libvirtd.conf as Debian ships them
REAL_QEMU_CONF = TOP / "tests/cases/qemu/real-9.0-consent/in/etc/libvirt/qemu.conf"
REAL_LIBVIRTD_CONF = TOP / "tests/cases/debug/libvirtd.conf"
# Xen 4.2's xend-config.sxp as Debian shipped it (the golden case keeps a copy in git).
XEND = TOP / "tests/cases/xend/real-4.2/in/etc/xen/xend-config.sxp"
LOCAL_XEND = TOP / "tests" / "cases" / "xend"
FULL = os.environ.get("FULL", "") == "1"
TEMP_SUFFIX = ".virtdeb-new"
MAX_PAGES = 4096  # the ENOSPC sweep stops at the first level with room for the apply

# Values for the keys whose validators accept any word.
NAMED_VALUES = {("bridge", "allow"): "br0 virbr1", ("access", "users"): "alice bob"}
USERS = ("alice", "bob")
BRIDGE_CONF = b"# qemu-bridge-helper access list\nallow virbr0\n"
PACKAGES = ("libvirt-daemon-system", "libvirt-clients", "qemu-system-x86", "qemu-system-common",
            "dnsmasq", "dnsmasq-base", "bridge-utils", "iptables", "netcat-openbsd",
            "xen-utils-4.2", "intel-microcode", "amd64-microcode")


# -- the root ----------------------------------------------------------------
def _status(packages: tuple[str, ...]) -> str:
    return "".join(f"Package: {p}\nStatus: install ok installed\nPriority: optional\n"
                   f"Architecture: all\nVersion: 1.0\nDescription: fake\n\n" for p in packages)


def enabling_config() -> str:
    """/etc/virtdeb/virtdeb.conf enabling everything the schema offers (new keys included)."""
    lines = []
    for section, keys in schema().items():
        lines.append(f"[{section}]")
        for key, setting in keys.items():
            value = _enabling_value(section, key, setting.default, setting.problem)
            lines.append(f"{key} = {value}")
        lines.append("")
    return "\n".join(lines)


def _enabling_value(section: str, key: str, default: str,
                    validate: Callable[[str], str | None]) -> str:
    if (section, key) == ("virtdeb", "allow_edit"):
        return " ".join(sorted(FOREIGN_FILES))
    if (section, key) in NAMED_VALUES:
        return NAMED_VALUES[(section, key)]
    if validate("no-such-value-zz") is None:  # free words: keep the default
        return default
    for value in ("yes", "fix", "0", "all", "on"):
        if validate(value) is None:
            return value
    return default


def conffiles() -> dict[str, bytes]:
    """Absolute path -> bytes of the real conffiles the root gets: Debian's own, kept under
    tests/cases (never read from the host, whose copies may be edited or unreadable)."""
    return {
        "/etc/libvirt/qemu.conf": REAL_QEMU_CONF.read_bytes(),
        "/etc/libvirt/libvirtd.conf": REAL_LIBVIRTD_CONF.read_bytes(),
        "/etc/xen/xend-config.sxp": XEND.read_bytes(),
        "/etc/qemu/bridge.conf": BRIDGE_CONF,
    }


def build_root(dest: Path, *, config: str | None = None) -> Path:
    """A fake root of real Debian conffiles with everything enabled; returns ``dest``."""
    files = conffiles()
    files["/etc/virtdeb/virtdeb.conf"] = (enabling_config() if config is None
                                          else config).encode()
    files["/var/lib/dpkg/status"] = _status(PACKAGES).encode()
    files["/etc/group"] = (b"root:x:0:\nkvm:x:104:\nlibvirt:x:107:\nlibvirt-qemu:x:64055:\n"
                           b"alice:x:1000:\nbob:x:1001:\n")
    files["/etc/passwd"] = (b"root:x:0:0:root:/root:/bin/bash\n"
                            b"alice:x:1000:1000::/home/alice:/bin/sh\n"
                            b"bob:x:1001:1001::/home/bob:/bin/sh\n")
    files["/etc/shadow"] = b"root:*:19000:0:99999:7:::\n"
    for path, data in files.items():
        real = dest / path.lstrip("/")
        real.parent.mkdir(parents=True, exist_ok=True)
        real.write_bytes(data)
    os.chmod(dest / "etc/shadow", 0o640)
    helper = dest / "usr/lib/qemu/qemu-bridge-helper"
    helper.parent.mkdir(parents=True, exist_ok=True)
    helper.write_bytes(b"\x7fELF fake qemu-bridge-helper\n")
    os.chmod(helper, 0o755)
    (dest / "etc/dnsmasq.d").mkdir(parents=True, exist_ok=True)
    return dest


def tiny_deb(where: Path, name: str = "vdtest") -> Path:
    """A small unrelated package, built here with dpkg-deb."""
    src = where / f"src-{name}"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: virtdeb tests <root@localhost>\nDescription: test package\n")
    (src / "usr/share/doc" / name).mkdir(parents=True)
    (src / "usr/share/doc" / name / "README").write_text("test\n")
    deb = where / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(src), str(deb)], check=True,
                   env=CLEAN_ENV, stdout=subprocess.DEVNULL)
    return deb


@contextmanager
def overlay(image: Path) -> Iterator[Path]:
    """``image`` as a throwaway overlay with /proc, for a chroot; only inside ``unshare -m``.

    The image never changes.  On exit everything is unmounted, and the scratch
    directory is removed only when nothing is mounted in it any more.
    """
    tmp = Path(tempfile.mkdtemp(prefix="virtdeb-overlay-"))
    merged = tmp / "merged"
    try:
        for d in ("upper", "work", "merged"):
            (tmp / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={image},upperdir={tmp / 'upper'},workdir={tmp / 'work'}",
                        str(merged)], check=True, env=CLEAN_ENV)
        subprocess.run(["mount", "-t", "proc", "proc", str(merged / "proc")], check=True,
                       env=CLEAN_ENV)
        yield merged
    finally:
        subprocess.run(["umount", "-R", str(merged)], env=CLEAN_ENV, check=False,
                       stderr=subprocess.DEVNULL)
        if not os.path.ismount(merged):
            shutil.rmtree(tmp)


# -- every rule's file changes -------------------------------------------------
@dataclass
class Plan:
    changes: list[FileChange]
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> reason
    non_file: dict[str, int] = field(default_factory=dict)  # rule -> count left out

    def rules(self) -> list[str]:
        return sorted({c.rule for c in self.changes})


def file_changes(root: Path, uri: str = URI) -> Plan:
    """Every registered rule's plan on ``root``, keeping its FileChange instances."""
    host = Host(root=root, uri=uri)
    plan = Plan([])
    try:
        for name, rule in load_all().items():
            try:
                changes = rule(host).plan()
            except LibvirtError as exc:
                plan.skipped[name] = f"needs libvirt beyond {uri}: {exc.message}"
                continue
            files = [c for c in changes if isinstance(c, FileChange)]
            plan.changes.extend(files)
            if len(files) != len(changes):
                plan.non_file[name] = len(changes) - len(files)
    finally:
        host.close()
    return plan


def apply_files(root: Path, command: str = "faults") -> int:
    """Plan on ``root`` under the lock and apply the file changes; how many."""
    host = Host(root=root, uri=URI)
    with Journal(host).locked(command):  # an interrupted entry is undone before planning
        plan = file_changes(root)
        Journal(host).apply(plan.changes, command)
    return len(plan.changes)


# -- states --------------------------------------------------------------------
Snap = dict[str, bytes | str]


def state(root: Path) -> Snap:
    """The root's files, without the journal (tests.golden.snapshot)."""
    return snapshot(root)


def temp_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{TEMP_SUFFIX}"))


def mixed(now: Snap, before: Snap, after: Snap, *, temps_ok: bool) -> list[str]:
    """Files of ``now`` that are neither as before nor as after (empty list: all good)."""
    problems = []
    for rel in sorted(set(now) | set(before) | set(after)):
        if rel.endswith(TEMP_SUFFIX) and temps_ok and rel in now and \
                rel not in before and rel not in after:
            continue  # a temp file under its own name, never the target's
        if now.get(rel) != before.get(rel) and now.get(rel) != after.get(rel):
            problems.append(f"{rel}: neither before nor after"
                            f" ({len(now.get(rel) or b'')} bytes)")
    return problems


def pending_entry(root: Path) -> bool:
    host = Host(root=root, uri=URI)
    return any(e.status != "reverted" for e in Journal(host).entries())


def revert(root: Path) -> None:
    Journal(Host(root=root, uri=URI)).revert()


def recover(root: Path, before: Snap, after: Snap, *, temps_ok: bool) -> list[str]:
    """Check an interrupted root, then revert a copy and re-apply another: the problems."""
    problems = mixed(state(root), before, after, temps_ok=temps_ok)
    for way in ("revert", "reapply"):
        copy = root.parent / f"{root.name}-{way}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy, symlinks=True)
        ran = True
        try:
            if way == "revert":
                ran = pending_entry(copy)
                if ran:
                    revert(copy)
                want = before
            else:
                apply_files(copy, "faults reapply")
                want = after
            now = state(copy)
            left = temp_files(copy) if ran else []
            if left:  # the next run that writes in a directory, and revert, remove them
                problems.append(f"{way}: temp files left: {', '.join(left)}")
            now = {k: v for k, v in now.items() if not k.endswith(TEMP_SUFFIX)}
            if now != want:
                bad = sorted(k for k in set(now) | set(want) if now.get(k) != want.get(k))
                problems.append(f"{way}: not all files as {'before' if want is before else 'after'}"
                                f": {', '.join(bad)}")
        except VirtdebError as exc:
            problems.append(f"{way}: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(copy, ignore_errors=True)
    return problems


# -- the fault injector --------------------------------------------------------
AUDIT_EVENTS = {"open", "os.mkdir", "os.chmod", "os.chown", "os.rename", "os.remove",
                "os.link", "os.truncate", "os.setxattr", "os.removexattr"}


class Injector:
    """Counts file-system steps under ``root`` and fails at step ``at`` (0: never)."""

    installed: Injector | None = None

    def __init__(self) -> None:
        self.root = ""
        self.at = 0
        self.count = 0
        self.action: Callable[[str], None] = lambda _step: None
        self.steps: list[str] = []
        self._fds: set[int] = set()
        self._real_fsync = os.fsync

    @classmethod
    def get(cls) -> Injector:
        """The process's one injector (audit hooks cannot be removed: install once)."""
        if cls.installed is None:
            cls.installed = cls()
            sys.addaudithook(cls.installed._audit)
            os.fsync = cls.installed._fsync
        return cls.installed

    @contextmanager
    def armed(self, root: Path, at: int, action: Callable[[str], None]) -> Iterator[Injector]:
        self.root, self.at, self.count, self.action, self.steps = str(root), at, 0, action, []
        try:
            yield self
        finally:
            self.root, self.at = "", 0

    def _step(self, what: str) -> None:
        self.count += 1
        self.steps.append(what)
        if self.count == self.at:
            self.action(what)

    def _ours(self, target: Any) -> bool:
        if isinstance(target, int):
            return True  # fchmod/fchown on a descriptor: virtdeb's temp file
        if isinstance(target, bytes):
            target = os.fsdecode(target)
        return isinstance(target, str | os.PathLike) and os.fspath(target).startswith(self.root)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.root or event not in AUDIT_EVENTS or not args:
            return
        if event == "open" and args[0] is None:
            return
        if self._ours(args[0]):
            self._step(f"{event} {args[0]}")

    def _fsync(self, fd: Any) -> None:
        if self.root:
            self._step(f"fsync {fd}")
        self._real_fsync(fd)


def sigkill(_step: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def child(argv: list[str]) -> int:
    """``kill N ROOT``: apply every file change, SIGKILL at step N; ``count ROOT``: print steps."""
    mode, args = argv[0], argv[1:]
    at, root = (int(args[0]), Path(args[1])) if mode == "kill" else (0, Path(args[0]))
    plan = file_changes(root)
    host = Host(root=root, uri=URI)
    with Injector.get().armed(root, at, sigkill) as inj:
        Journal(host).apply(plan.changes, "faults")
    print(json.dumps({"steps": inj.steps, "changes": len(plan.changes)}))
    return 0


def enospc(argv: list[str]) -> int:
    """``enospc SRC MNT``, inside ``unshare -m``: a small tmpfs on MNT, filled so that the
    apply of SRC's file changes runs out of space at each page of its writes in turn.
    Prints one JSON line per level: free pages, whether the apply failed, the problems."""
    src, mnt = Path(argv[0]), Path(argv[1])
    before, after = state(src), after_state(src)
    need = sum(len(v) for v in after.values() if isinstance(v, bytes))
    size = (8 * need // 4096 + 256) * 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
                   check=True, env=CLEAN_ENV)
    root, filler = mnt / "root", mnt / "filler"
    for free in range(MAX_PAGES):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(src, root, symlinks=True)
        _fill(filler, free)
        error = ""
        try:
            apply_files(root)
        except VirtdebError as exc:
            error = str(exc)
        problems = mixed(state(root), before, after, temps_ok=False)
        problems += [f"stray temp file {t}" for t in temp_files(root)]
        filler.unlink()
        problems += recover(root, before, after, temps_ok=False)
        print(json.dumps({"free_pages": free, "error": error, "problems": problems}), flush=True)
        if not error:
            break  # the first level with room for the whole apply
    return 0


def _fill(filler: Path, free_pages: int) -> None:
    """Leave exactly ``free_pages`` pages free on the file system of ``filler``."""
    st = os.statvfs(filler.parent)
    size = st.f_bavail * st.f_frsize - free_pages * 4096
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(size, 0))


def after_state(src: Path) -> Snap:
    """The state after an uninterrupted apply of ``src`` (made on a copy)."""
    copy = src.parent / f"{src.name}-after"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(src, copy, symlinks=True)
    try:
        apply_files(copy)
        return state(copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "tests.harness.faults", *args], cwd=TOP, env=CLEAN_ENV,
                          capture_output=True, text=True, check=False, timeout=120)


def pick(total: int, fast: int) -> list[int]:
    """Every step under FULL=1; else ``fast`` steps spread over 1..total (ends included)."""
    if FULL or total <= fast:
        return list(range(1, total + 1))
    stride = (total - 1) / (fast - 1)
    return sorted({round(1 + i * stride) for i in range(fast)})


# -- the summary line -----------------------------------------------------------
class _Summary:
    """A pytest plugin registered at run time: the suites' count lines at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("virtdeb safety counts")
        for line in self.lines:
            terminalreporter.write_line(line)


def say(request: Any, line: str) -> None:
    """A line for the terminal summary (shown without -s too)."""
    manager = request.config.pluginmanager
    summary = manager.get_plugin("virtdeb-safety-summary")
    if summary is None:
        summary = _Summary()
        manager.register(summary, "virtdeb-safety-summary")
    summary.lines.append(line)


if __name__ == "__main__":
    sys.exit(enospc(sys.argv[2:]) if sys.argv[1] == "enospc" else child(sys.argv[1:]))
