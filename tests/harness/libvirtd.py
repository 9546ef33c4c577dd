"""A private, real ``libvirtd`` for tests that never disturbs the host.

How it works
------------
``PrivateLibvirtd`` creates a network namespace ``vdtest-<ownerpid>-<hex>`` (``lo`` up)
and a scratch directory ``<tmp>/vdtest-<ownerpid>-<hex>/`` laid out like a root::

    etc/libvirt/        copy of the host's /etc/libvirt (cp -a); by default WITHOUT any
                        definitions (qemu/, storage/, lxc/, libxl/, secrets/, nodedev/ are
                        dropped, so the host's qemu/networks/default.xml is not there)
    run/                bind-mounted over the WHOLE /run (the host has no /run/libvirt to
                        mount over, and creating it would touch the host; it also hides the
                        host's D-Bus, so libvirt never talks to a host firewalld)
    var/lib/libvirt/    directories (owner and mode) replicated from the host, no files
    var/cache/libvirt/  idem
    var/log/libvirt/    idem, plus var/log/libvirt/qemu
    log/                libvirtd.log, virtlogd.log (LIBVIRT_LOG_OUTPUTS), daemon.out

and runs ``ip netns exec NS unshare -m --propagation private sh SCRATCH/start.sh``; the
script bind-mounts those directories over /etc/libvirt, /run, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt, starts ``virtlogd -d`` and then ``exec libvirtd``
in the foreground: the Popen child *is* libvirtd, which makes stopping it simple.
Nothing is mounted or created in the host's namespaces except the netns handle
``/run/netns/NS`` and the scratch directory.

The test process stays in the host's namespaces and reaches the daemon through
``uri = "qemu+unix:///system?socket=SCRATCH/run/libvirt/libvirt-sock"``. Since the
scratch directory mirrors the paths the daemon sees, ``scratch`` can also serve as a
``--root`` for code that reads /etc/libvirt/... (``scratch / "etc/libvirt/qemu.conf"`` is
the daemon's qemu.conf). ``run_in_ns(cmd)`` runs in the network namespace only (host
files); ``run_in_ns(cmd, mounts=True)`` enters libvirtd's mount namespace too (nsenter),
so the command sees the private /etc/libvirt, /run, /var/lib/libvirt.

``before_start(scratch)`` (optional) runs once the scratch directory is laid out and
before the daemons start: e.g. to write SCRATCH/etc/libvirt/libvirtd.conf, or to start a
private D-Bus at SCRATCH/run/dbus/system_bus_socket (tests/test_acl_libvirtd.py).

Two deviations from the host, both inside the private mount namespace only:
- /dev is a private one (tests/harness/private-dev.sh: a tmpfs with its own nodes), never
  the host's. Its /dev/kvm is 0660 root:kvm, what Debian's udev rule gives
  (``kvm_group_access``): the host's is 0600 root:root here (no udev), the qemu user
  (libvirt-qemu, group kvm) could not open it, and libvirt would decide KVM is "not
  available now" and re-probe qemu on every capabilities lookup (first defineXML about 32 s).
- libvirt's qemu capabilities cache (first probe about 4 s) is kept between daemons in
  the checkout's .cache/qemu-capabilities (``VIRTDEB_TEST_QEMU_CAPS``, "" disables);
  libvirt itself invalidates stale entries. The first defineXML then takes about 0.03 s.

Verified on Debian 12, libvirt 9.0.0, as root (see tests/test_libvirtd_harness.py):
- the daemon answers on ``uri`` about 0.1-0.2 s after the spawn;
- ``default`` defined from /usr/share/libvirt/networks/default.xml starts (dnsmasq-base,
  iptables), gets autostart, and virbr0 192.168.122.1/24 appears in ``ip -n NS addr``
  only; ``ip link show virbr0`` on the host fails; the iptables rules are in the netns;
- a KVM domain (``<domain type='kvm'>``) can be defined (not started here; starting one
  would also create cgroups under the host's /sys/fs/cgroup);
- the host gets no /run/libvirt, its /etc/libvirt, /var/lib/libvirt are untouched.

Teardown (``stop()``, ``__exit__``, also on exceptions and KeyboardInterrupt, idempotent):
SIGTERM libvirtd (SIGKILL after 10 s) and wait. libvirt >= 10 acts on SIGTERM only once
its node device driver has enumerated the devices (start() waits for that, in both
modes); libvirt then sometimes never finishes its own shutdown (its "daemon-shutdown"
thread waits for the "udev-event" thread forever, seen with 9.0 and 11 on bookworm,
trixie and sid, host and chroot mode alike). A SIGKILL after a shutdown that began is a note in
``teardown_notes``, not a problem: nothing of a throwaway namespace is lost. A daemon
that never acted on SIGTERM (no daemon-shutdown thread) is a problem: stop() raises,
naming its threads and the end of its log. Then SIGTERM, later SIGKILL every pid of
``ip netns pids NS`` (virtlogd, dnsmasq children and qemu outlive libvirtd) until none is
left; ``ip netns del NS``; wait (``reap_wait``, 5 s at most) until init has reaped the
orphaned virtlogd/dnsmasq zombies, so that ``pgrep`` shows nothing (init here reaps about
every 1.7 s: that is most of the stop time); remove the scratch directory. Only pids
inside OUR namespace or spawned by us are signalled: a host
libvirtd is never touched. Safety nets: a ``weakref.finalize`` (runs at interpreter
exit), and at every start a sweep of ``vdtest-<pid>-*`` namespaces and scratch
directories whose owner pid is dead (a SIGKILLed pytest).

Chroot mode (``PrivateLibvirtd(root=DIR)``)
------------------------------------------
The same machinery runs the libvirtd and virtlogd *of a chroot* DIR (a Debian root with
libvirt-daemon-system installed, e.g. ``make demo-image``'s .cache/demo-trixie) in the
same kind of private network and mount namespaces. start.sh then mounts, inside the
private mount namespace only: (with ``overlay=True``) an overlay of DIR with
SCRATCH/upper on SCRATCH/root, so DIR itself never changes; ``proc`` on ROOT/proc, the
private /dev on ROOT/dev (its kvm node of group ``kvm`` of the chroot), a ``sysfs`` of the
network namespace on ROOT/sys, a tmpfs on
ROOT/run (with /run/lock, /run/libvirt) and SCRATCH/log on ROOT/run/vdtest-log; then
``exec chroot ROOT sh -c 'virtlogd -d; exec libvirtd'``. The chroot's own /etc/libvirt,
/var/lib/libvirt, ... are used as they are (no copies: the root is the caller's).
When the namespace's last process exits, the kernel drops every one of those mounts;
nothing is ever mounted in the host's namespace.

- ``uri`` is ``qemu+unix:///system?socket=/proc/PID/root/run/libvirt/libvirt-sock``
  (PID: libvirtd), set once the daemon runs; ``root_view`` (``/proc/PID/root``) shows the
  host the files as the daemon sees them (overlay, private /run).
- ``run_in_ns(cmd, mounts=True)`` runs CMD inside the chroot (``nsenter -m -n -r``):
  ``virtdeb doctor`` there talks to qemu:///system as on a real host;
  ``popen_in_ns(cmd)`` starts a long-running extra (e.g. ``/usr/sbin/sshd -D -e``) in
  the same namespaces and chroot; ``ns_argv(cmd)`` is the argv prefix for one's own
  subprocess calls. Teardown stops those too (every process of the netns is killed).
- ``before_start(scratch)`` runs as in host mode (e.g. to write SCRATCH/upper/etc/...
  in overlay mode, or to set up veths).
- with ``overlay=True`` the chroot's qemu capabilities are cached between daemons in
  ``.cache/qemu-capabilities-IMAGENAME`` (put into the overlay's upper layer before the
  start, read back after the stop: the image never changes). A daemon without them
  probes its qemu first (about 3.5 s, much longer on a loaded machine) and does not act
  on SIGTERM before that probe is done: start() waits for it (getCapabilities).

The pids, namespaces and sweeps are tests/harness/procs.py's; the mounts of the
private namespace and the private /dev are tests/harness/chroot.py's; the pytest
fixtures of this daemon are tests/harness/plugin.py's.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.harness import chroot, procs
from tests.harness.procs import PATH, clean_env, netns_pids

NETNS_PREFIX = "vdtest-"
_NAME_RE = re.compile(r"^vdtest-(\d+)-[0-9a-f]+$")
# Host directories the daemon gets a private copy of (relative to /).
BIND_DIRS = ("etc/libvirt", "run", "var/lib/libvirt", "var/cache/libvirt", "var/log/libvirt")
# Subdirectories of /etc/libvirt that hold definitions (domains, networks, pools, ...).
DEFINITION_DIRS = ("qemu", "storage", "lxc", "libxl", "secrets", "nodedev")
# veth pair used by add_address()/add_route().
VETH = ("vdA", "vdB")
# libvirt's first probe of qemu-system-x86_64 costs about 35 s on 2 cores; its result is
# kept here between daemons and runs (libvirt itself invalidates a stale entry: it checks
# the qemu and libvirtd ctimes, kernel, microcode). Set the variable to "" to disable.
CAPS_CACHE_ENV = "VIRTDEB_TEST_QEMU_CAPS"
CAPS_CACHE_DEFAULT = str(Path(__file__).resolve().parents[2] / ".cache/qemu-capabilities")


class PrivateLibvirtdError(RuntimeError):
    """The private daemon could not be set up, started or torn down."""


def _run(
    cmd: Sequence[str], check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = procs.run(cmd, timeout=timeout)
    if check and proc.returncode != 0:
        why = proc.stderr.strip() or proc.stdout.strip()
        raise PrivateLibvirtdError(f"{shlex.join(cmd)} exited {proc.returncode}: {why}")
    return proc


def shutdown_begun(threads: Sequence[tuple[str, str]]) -> bool:
    """Whether libvirtd acted on SIGTERM: it runs its drivers' shutdown in a thread it
    names "daemon-shutdown" (libvirt >= 6.5), which exists only once the signal is taken."""
    return any(name == "daemon-shutdown" for name, _wchan in threads)


def _tail(path: Path, lines: int) -> list[str] | None:
    """The last LINES lines of a log file, or None when it cannot be read."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return None


def sweep_stale(base_dir: str | None = None) -> list[str]:
    """Remove vdtest-<pid>-* namespaces and scratch dirs whose owner pid is dead."""
    return procs.sweep_dead_owners(_NAME_RE, Path(base_dir or tempfile.gettempdir()))


CAPS_SUBDIR = "var/cache/libvirt/qemu/capabilities"


def _sync_xml(src: Path, dst: Path) -> None:
    """Copy SRC/*.xml to DST when missing or different there (atomic replace, mode 0600)."""
    if not src.is_dir():
        return
    for f in src.glob("*.xml"):
        data = f.read_bytes()
        target = dst / f.name
        with contextlib.suppress(OSError):
            if target.read_bytes() == data:
                continue
        dst.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dst / f".{f.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)


# every teardown note of this process, for the pytest summary (none is lost unseen)
SESSION_NOTES: list[str] = []
TERM_WAIT = 10.0  # seconds libvirtd gets to stop on SIGTERM before the SIGKILL


class _State:
    """Everything teardown needs; no reference to the PrivateLibvirtd (for finalize)."""

    def __init__(
        self, netns: str, scratch: Path, keep_scratch: bool, caps_cache: Path | None,
        log_path: Path,
    ) -> None:
        self.netns = netns
        self.scratch = scratch
        self.keep_scratch = keep_scratch
        self.caps_cache = caps_cache
        self.caps_dir = scratch / CAPS_SUBDIR  # the daemon's cache as the host sees it
        self.log_path = log_path  # libvirtd's log as the host sees it
        self.notes: list[str] = []  # what teardown did that is not a problem
        self.reap_wait = 5.0
        self.killed: set[int] = set()
        self.proc: subprocess.Popen[bytes] | None = None
        self.netns_created = False
        self.scratch_created = False

    def teardown(self) -> list[str]:
        """Idempotent; every step runs even if an earlier one failed. Returns problems."""
        problems: list[str] = []
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=TERM_WAIT)
                except subprocess.TimeoutExpired:
                    threads = procs.threads(proc.pid)
                    if shutdown_begun(threads):
                        # libvirt (9.0, 11) sometimes never finishes its own shutdown: its
                        # daemon-shutdown thread waits for the udev-event thread forever.
                        # Nothing of a throwaway namespace is lost by the SIGKILL.
                        note = (f"libvirtd {proc.pid} began its shutdown but had not"
                                f" finished it after {TERM_WAIT:g} s"
                                f" ({procs.describe_threads(threads)}); SIGKILL")
                        self.notes.append(note)
                        SESSION_NOTES.append(note)
                    else:
                        log_end = " | ".join(t.strip() for t in _tail(self.log_path, 2) or [])
                        problems.append(
                            f"libvirtd {proc.pid} did not act on SIGTERM in {TERM_WAIT:g} s"
                            f" ({procs.describe_threads(threads)}; its log ends:"
                            f" {log_end or '-'}); SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=10)
            self.proc = None
        if self.netns_created:
            self.killed.update(netns_pids(self.netns))
            left = procs.kill_netns_processes(self.netns)
            if left:
                problems.append(f"processes survive SIGKILL in {self.netns}: {left}")
            res = _run(["ip", "netns", "del", self.netns], check=False)
            if res.returncode != 0 and procs.netns_exists(self.netns):
                problems.append(f"ip netns del {self.netns}: {res.stderr.strip()}")
            else:
                self.netns_created = False
        # Daemonized children (virtlogd, dnsmasq) were orphaned at start: they are init's
        # children and stay zombies (visible to pgrep) until init reaps them. This
        # machine's init reaps about every 1.7 s; wait for it, bounded, not an error.
        deadline = time.monotonic() + self.reap_wait
        while self.killed and time.monotonic() < deadline:
            self.killed = {p for p in self.killed if procs.is_zombie(p)}
            if self.killed:
                time.sleep(0.05)
        if self.scratch_created and self.caps_cache is not None:
            with contextlib.suppress(OSError):
                _sync_xml(self.caps_dir, self.caps_cache)
        if self.scratch_created and not self.keep_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
            if self.scratch.exists():
                problems.append(f"could not remove {self.scratch}")
            else:
                self.scratch_created = False
        return problems


def _finalize(state: _State) -> None:
    # Safety net at interpreter exit or garbage collection: best effort, never raises.
    with contextlib.suppress(Exception):
        state.teardown()


class PrivateLibvirtd:
    """A real libvirtd in its own network and mount namespaces. See the module docstring.

    Attributes: ``netns`` (str), ``scratch`` (Path), ``socket`` (Path), ``uri`` (str),
    ``log_path`` (Path), ``start_seconds`` / ``stop_seconds`` (float | None).
    """

    def __init__(
        self,
        *,
        start_timeout: float = 20.0,
        log_level: int = 3,
        keep_definitions: bool = False,
        keep_scratch: bool = False,
        base_dir: str | None = None,
        caps_cache: str | None = None,
        daemon_env: dict[str, str] | None = None,
        kvm_group_access: bool = True,
        reap_wait: float = 5.0,
        before_start: Callable[[Path], None] | None = None,
        root: str | os.PathLike[str] | None = None,
        overlay: bool = False,
    ) -> None:
        self.before_start = before_start
        # chroot mode: the root whose libvirtd runs (None: the host's, with scratch copies)
        self.root = Path(root).resolve() if root is not None else None
        if overlay and self.root is None:
            raise PrivateLibvirtdError("overlay=True needs root=DIR")
        self.overlay = overlay
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.daemon_env = dict(daemon_env or {})
        self.kvm_group_access = kvm_group_access
        self.keep_definitions = keep_definitions
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.scratch = Path(base_dir or tempfile.gettempdir()) / self.netns
        self.base_dir = base_dir
        self.socket = self.scratch / "run/libvirt/libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.log_dir = self.scratch / "log"
        self.log_path = self.log_dir / "libvirtd.log"
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        explicit = caps_cache is not None
        if caps_cache is None:
            caps_cache = os.environ.get(CAPS_CACHE_ENV, CAPS_CACHE_DEFAULT)
        cache = caps_cache
        if self.root is not None:
            # the chroot's own qemu: a cache per image, in overlay mode only (a root used
            # as it is keeps libvirt's cache itself)
            if not overlay:
                cache = ""
            elif cache and not explicit:
                cache = f"{cache}-{self.root.name}"
        self.caps_cache = Path(cache) if cache else None
        self._state = _State(self.netns, self.scratch, keep_scratch, self.caps_cache,
                             self.log_path)
        if self.root is not None:
            self._state.caps_dir = self.scratch / "upper" / CAPS_SUBDIR
        self._state.reap_wait = reap_wait
        self._finalizer = weakref.finalize(self, _finalize, self._state)
        self._veth_made = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> PrivateLibvirtd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def teardown_notes(self) -> list[str]:
        """What stop() did that is not a problem (a SIGKILL after a shutdown that began)."""
        return list(self._state.notes)

    @property
    def caps_dir(self) -> Path:
        """The daemon's qemu capabilities cache as the host sees it (in the overlay's
        upper layer under a root)."""
        return self._state.caps_dir

    @property
    def pid(self) -> int | None:
        """Pid of libvirtd (the Popen child), or None when not running."""
        proc = self._state.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> PrivateLibvirtd:
        t0 = time.monotonic()
        try:
            sweep_stale(self.base_dir)
            if self.root is None:
                self._prepare_scratch()
            else:
                self._prepare_chroot()
            if self.before_start is not None:
                self.before_start(self.scratch)
            self._create_netns()
            self._spawn()
            if self.root is not None:
                self._chroot_endpoints()
            self._wait_ready()
        except BaseException:
            self.stop(raise_problems=False)
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self, raise_problems: bool = True) -> None:
        """Tear everything down; safe to call twice; finishes even if interrupted."""
        t0 = time.monotonic()
        interrupted: BaseException | None = None
        problems: list[str] = []
        for _attempt in range(3):
            try:
                problems = self._state.teardown()
                break
            except KeyboardInterrupt as e:  # keep tearing down, re-raise afterwards
                interrupted = e
        self._finalizer.detach()
        self.stop_seconds = time.monotonic() - t0
        if interrupted is not None:
            raise interrupted
        if problems and raise_problems:
            raise PrivateLibvirtdError("teardown incomplete: " + "; ".join(problems))

    def _prepare_scratch(self) -> None:
        for rel in ("etc/libvirt", "var/lib/libvirt", "var/cache/libvirt", "var/log/libvirt"):
            if not Path("/", rel).is_dir():
                raise PrivateLibvirtdError(f"/{rel} missing on the host (libvirt-daemon-system?)")
        self.scratch.mkdir(mode=0o755)
        self._state.scratch_created = True
        os.chmod(self.scratch, 0o755)
        s = self.scratch
        (s / "etc").mkdir()
        _run(["cp", "-a", "/etc/libvirt", str(s / "etc/libvirt")])
        if not self.keep_definitions:
            for sub in DEFINITION_DIRS:
                p = s / "etc/libvirt" / sub
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
        for rel in ("var/lib/libvirt", "var/cache/libvirt", "var/log/libvirt"):
            chroot.replicate_dirs(Path("/", rel), s / rel)
        (s / "var/log/libvirt/qemu").mkdir(exist_ok=True)
        if self.caps_cache is not None:
            _sync_xml(self.caps_cache, s / CAPS_SUBDIR)
        for rel in ("run/libvirt", "run/lock"):
            (s / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(s / "run", 0o755)
        self.log_dir.mkdir()
        q = shlex.quote
        mounts = chroot.host_mounts(s, BIND_DIRS, self.kvm_group_access)
        vl_log = q(f"{self.log_level}:file:{self.log_dir / 'virtlogd.log'}")
        script = (
            "set -eu\n"
            f"{mounts}\n"
            f"LIBVIRT_LOG_OUTPUTS={vl_log} virtlogd -d -p /run/virtlogd.pid\n"
            "exec libvirtd -p /run/libvirtd.pid\n"
        )
        (s / "start.sh").write_text(script)

    def _prepare_chroot(self) -> None:
        """Scratch and start.sh for chroot mode (see the module docstring)."""
        assert self.root is not None
        root = self.root
        for rel in ("usr/sbin/libvirtd", "usr/sbin/virtlogd"):
            if not (root / rel).is_file():
                raise PrivateLibvirtdError(
                    f"{root / rel} missing: not a root with libvirt-daemon-system installed")
        for rel in ("proc", "dev", "sys", "run"):
            if not (root / rel).is_dir():
                raise PrivateLibvirtdError(f"{root / rel} is not a directory")
        self.scratch.mkdir(mode=0o755)
        self._state.scratch_created = True
        os.chmod(self.scratch, 0o755)
        s = self.scratch
        self.log_dir.mkdir()
        q = shlex.quote
        lines = ["set -eu"]
        if self.overlay:
            for d in ("upper", "work", "root"):
                (s / d).mkdir()
            if self.caps_cache is not None:
                # the cached qemu capabilities go into the overlay (the image never changes);
                # their parents get the image's owner and mode, which the merged view shows
                chroot.mirror_parents(root, s / "upper", CAPS_SUBDIR)
                _sync_xml(self.caps_cache, s / "upper" / CAPS_SUBDIR)
        lines += chroot.chroot_mounts(root, s, self.log_dir, overlay=self.overlay,
                                      kvm_group_access=self.kvm_group_access)
        vl_log = q(f"{self.log_level}:file:{chroot.LOG_MOUNT}/virtlogd.log")
        inner = (f"LIBVIRT_LOG_OUTPUTS={vl_log} virtlogd -d -p /run/virtlogd.pid && "
                 "exec libvirtd -p /run/libvirtd.pid")
        lines.append(f'exec chroot "$R" /bin/sh -c {q(inner)}')
        (s / "start.sh").write_text("\n".join(lines) + "\n")

    def _chroot_endpoints(self) -> None:
        proc = self._state.proc
        assert proc is not None
        self.socket = Path(f"/proc/{proc.pid}/root/run/libvirt/libvirt-sock")
        self.uri = f"qemu+unix:///system?socket={self.socket}"

    @property
    def root_view(self) -> Path:
        """The daemon's root as the host can read it (/proc/PID/root), while it runs."""
        pid = self.pid
        if pid is None:
            raise PrivateLibvirtdError("libvirtd is not running")
        return Path(f"/proc/{pid}/root")

    def _create_netns(self) -> None:
        res = _run(["ip", "netns", "add", self.netns], check=False)
        if res.returncode != 0:
            raise NetnsUnavailable(f"ip netns add {self.netns}: {res.stderr.strip()}")
        self._state.netns_created = True
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])

    def _spawn(self) -> None:
        # the daemon's own view of the log (chroot mode: SCRATCH/log is ROOT/run/vdtest-log)
        log_path = self.log_path if self.root is None else f"{chroot.LOG_MOUNT}/libvirtd.log"
        out = open(self.log_dir / "daemon.out", "wb")  # noqa: SIM115
        try:
            self._state.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
                 "sh", str(self.scratch / "start.sh")],
                env=clean_env({"LIBVIRT_LOG_OUTPUTS": f"{self.log_level}:file:{log_path}",
                          **self.daemon_env}),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C goes to pytest, not to libvirtd
            )
        finally:
            out.close()

    def _wait_ready(self) -> None:
        import libvirt  # noqa: PLC0415 - optional: the module must import without it

        deadline = time.monotonic() + self.start_timeout
        last = "socket never appeared"
        while time.monotonic() < deadline:
            proc = self._state.proc
            assert proc is not None
            if proc.poll() is not None:
                raise PrivateLibvirtdError(
                    f"libvirtd exited with {proc.returncode} before it was ready\n{self.logs()}"
                )
            if self.socket.is_socket():
                # A raw connect first: libvirt.open() failures print to stderr.
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sk:
                        sk.settimeout(1)
                        sk.connect(str(self.socket))
                    conn = libvirt.open(self.uri)
                    try:
                        conn.getLibVersion()
                        # libvirt >= 10 (trixie) acts on SIGTERM only once the node
                        # device driver has enumerated the devices; its calls wait
                        # for that, so this one makes start() wait for it too
                        conn.listAllDevices(0)
                        # and only once it has probed its qemu (the capabilities cache):
                        # getCapabilities waits for that probe
                        conn.getCapabilities()
                    finally:
                        conn.close()
                    return
                except (OSError, libvirt.libvirtError) as e:
                    last = str(e)
            time.sleep(0.02)
        raise PrivateLibvirtdError(
            f"libvirtd not ready on {self.uri} after {self.start_timeout} s ({last})\n{self.logs()}"
        )

    def logs(self, lines: int = 40) -> str:
        """The tail of daemon.out, libvirtd.log and virtlogd.log, for error messages."""
        parts = []
        for name in ("daemon.out", "libvirtd.log", "virtlogd.log"):
            p = self.log_dir / name
            text = _tail(p, lines)
            if text is None:
                continue
            parts.append(f"--- {p}\n" + "\n".join(text))
        return "\n".join(parts) or "(no log)"

    # ------------------------------------------------------------------- helpers
    def connect(self) -> Any:
        """A new read-write ``libvirt.virConnect`` to the private daemon."""
        import libvirt  # noqa: PLC0415

        return libvirt.open(self.uri)

    def pids(self) -> list[int]:
        """Pids of all processes in the namespace (libvirtd, virtlogd, dnsmasq, qemu)."""
        return netns_pids(self.netns)

    def run_in_ns(
        self, cmd: Sequence[str] | str, *, mounts: bool = False, check: bool = True,
        timeout: float = 60, input: str | None = None,  # noqa: A002
    ) -> subprocess.CompletedProcess[str]:
        """Run CMD (argv list, or a string for ``sh -c``) in the network namespace.

        mounts=False: ``ip netns exec NS`` - the host's files. mounts=True: ``nsenter`` into
        libvirtd's network AND mount namespaces, so /etc/libvirt, /run, /var/lib/libvirt
        are the private ones; in chroot mode CMD also runs inside the chroot. Output is
        captured as text; check=True raises
        CalledProcessError on a non-zero exit.
        """
        return subprocess.run(
            self.ns_argv(cmd, mounts=mounts), env=clean_env(), capture_output=True, text=True,
            check=check, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def ns_argv(self, cmd: Sequence[str] | str, *, mounts: bool = True) -> list[str]:
        """The argv that runs CMD (argv list, or a string for ``sh -c``) in the namespaces.

        mounts=True: libvirtd's network and mount namespaces, and in chroot mode its root
        too (``nsenter -t PID -m -n [-r]``); mounts=False: ``ip netns exec NS`` (the
        host's files).
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not mounts:
            return ["ip", "netns", "exec", self.netns, *argv]
        pid = self.pid
        if pid is None:
            raise PrivateLibvirtdError("libvirtd is not running")
        # -r -w: its root and cwd (a chroot's, or the one pytest itself runs in)
        return ["nsenter", "-t", str(pid), "-m", "-n", "-r", "-w", "--", *argv]

    def popen_in_ns(
        self, cmd: Sequence[str] | str, *, mounts: bool = True, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start CMD in the namespaces (and chroot) like ``run_in_ns``, without waiting.

        For extra daemons beside libvirtd (sshd -D, a D-Bus): it joins the network
        namespace, so ``stop()`` kills it with everything else. ``env`` defaults to a
        clean one, stdin to /dev/null; other keyword arguments go to ``subprocess.Popen``.
        """
        kwargs.setdefault("env", clean_env())
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.ns_argv(cmd, mounts=mounts), **kwargs)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ARGS...``"""
        return subprocess.run(["ip", "-n", self.netns, *args], env=clean_env(), capture_output=True,
                              text=True, check=check, stdin=subprocess.DEVNULL)

    def _ensure_veth(self) -> str:
        a, b = VETH
        if not self._veth_made or self.ip("link", "show", a, check=False).returncode != 0:
            self.ip("link", "add", a, "type", "veth", "peer", "name", b)
            self.ip("link", "set", a, "up")
            self.ip("link", "set", b, "up")
            self._veth_made = True
        return a

    def add_address(self, cidr: str) -> str:
        """Put CIDR (e.g. ``192.168.122.5/24``) on veth vdA in the namespace; return 'vdA'.

        (This kernel has no ``dummy`` link type.) The prefix route comes with it.
        """
        dev = self._ensure_veth()
        self.ip("addr", "add", cidr, "dev", dev)
        return dev

    def add_route(self, cidr: str, via: str | None = None) -> str:
        """Add a route to CIDR (e.g. ``192.168.0.0/16``) through veth vdA; return 'vdA'.

        With VIA, the gateway must be on a subnet already on vdA (see add_address).
        """
        dev = self._ensure_veth()
        extra = ["via", via] if via else []
        self.ip("route", "add", cidr, *extra, "dev", dev)
        return dev

    def reset_links(self) -> None:
        """Delete the helper veth pair (with its addresses and routes)."""
        if self.ip("link", "show", VETH[0], check=False).returncode == 0:
            self.ip("link", "del", VETH[0])
        self._veth_made = False

    def reset(self, conn: Any | None = None) -> None:
        """Destroy and undefine every domain, network and storage pool; drop helper veths."""
        own = conn is None
        if conn is None:
            conn = self.connect()
        try:
            reset_libvirt(conn)
        finally:
            if own:
                conn.close()
        self.reset_links()

    def fresh_conn(self) -> Any:
        """reset() then a new connection."""
        self.reset()
        return self.connect()


class NetnsUnavailable(PrivateLibvirtdError):
    """``ip netns add`` was refused (no CAP_SYS_ADMIN, restricted container)."""


def reset_libvirt(conn: Any) -> None:
    """Destroy and undefine all domains, networks and storage pools of CONN."""
    import libvirt  # noqa: PLC0415

    undefine_flags = 0
    for flag in ("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                 "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", "VIR_DOMAIN_UNDEFINE_NVRAM"):
        undefine_flags |= getattr(libvirt, flag, 0)
    for dom in conn.listAllDomains():
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefineFlags(undefine_flags)
    for net in conn.listAllNetworks():
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()
    for pool in conn.listAllStoragePools():
        if pool.isActive():
            pool.destroy()
        if pool.isPersistent():
            pool.undefine()


def skip_reason() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.environ.get("VIRTDEB_SKIP_LIBVIRTD"):
        return "VIRTDEB_SKIP_LIBVIRTD is set"
    if os.geteuid() != 0:
        return "a private libvirtd needs root (ip netns, mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "libvirtd", "virtlogd"):
        if shutil.which(tool, path=PATH) is None:
            return f"{tool} not installed (libvirt-daemon-system, iproute2, util-linux)"
    try:
        import libvirt  # noqa: F401, PLC0415
    except ImportError:
        return "python3-libvirt not importable (run with /usr/bin/python3)"
    return None
