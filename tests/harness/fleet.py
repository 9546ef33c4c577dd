"""A fleet of libvirt "hosts" on one machine, for tests/test_fleet.py.

Each host is what an admin's machine is to Ansible: its own network namespace with one
address, its own root, its own sshd and its own libvirtd.

Network: a "switch" namespace ``vdfleet-<pid>-sw`` holds a bridge; every host and the
controller (``vdfleet-<pid>-ctl``, where ansible, ssh and virsh run) get a veth pair whose
outer end is created directly in the switch namespace and enslaved to the bridge. The
addresses are from 192.0.2.0/24 (TEST-NET-1, RFC 5737, never routed) and exist only inside
those namespaces: the host's own namespace gets no interface, no address, no route.

Root: an overlay of the cached image ``.cache/fleet-SUITE`` (lower, read-only, shared by
the hosts of that suite) with a per-host upper directory in the scratch directory. It is
mounted by the host's *keeper*, ``ip netns exec NS unshare -m --propagation private sh
keeper.sh``, a shell that mounts the overlay, /proc, /sys, a private /dev (null, zero,
random, urandom, tty, devpts, and a /dev/kvm node 0660 group kvm as Debian's udev rule
makes it), tmpfs /run and /tmp, then sleeps. sshd and libvirtd run in the keeper's mount and
network namespaces (``nsenter -t KEEPER -m -n -- chroot ROOT ...``), so they see the same
files and the same /run/libvirt/libvirt-sock: ``qemu+ssh://`` through the remote
virt-ssh-helper or nc reaches that libvirtd. Nothing is mounted in the host's namespace; the
host reads the root through ``/proc/KEEPER/root``.

Teardown (``stop()``, also on errors, idempotent): every process of every namespace
(keeper, sshd and its sessions, libvirtd, virtlogd, ssh ControlPersist masters) gets
SIGTERM, then SIGKILL; when the last process of a mount namespace is gone the kernel drops
its mounts (the overlay included); then ``ip netns del`` and the scratch directory goes.
``leftovers()`` says what is still there (namespaces, processes, mounts, directories).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.libvirtd import netns_pids

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREFIX = "vdfleet-"
SUBNET = "192.0.2"  # TEST-NET-1: documentation only, routed nowhere
CONTROLLER_ADDR = f"{SUBNET}.2"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")


class FleetError(Exception):
    pass


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": "/root"}
    env.update(extra or {})
    return env


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
         env: dict[str, str] | None = None, input: str | None = None,  # noqa: A002
         ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), env=env or _env(), capture_output=True, text=True,
                         timeout=timeout, input=input,
                         stdin=None if input is not None else subprocess.DEVNULL, check=False)
    if check and res.returncode != 0:
        raise FleetError(f"{shlex.join(argv)}: exit {res.returncode}\n{res.stdout}{res.stderr}")
    return res


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not state[state.rfind(")") + 2:].startswith(("Z", "X"))


def kill_netns(*namespaces: str, timeout: float = 10.0) -> list[int]:
    """SIGTERM every process of NAMESPACES, SIGKILL after 2 s; the pids still alive after."""
    deadline = time.monotonic() + timeout
    first = time.monotonic()
    while True:
        pids = [p for ns in namespaces for p in netns_pids(ns) if _alive(p)]
        if not pids or time.monotonic() > deadline:
            return pids
        sig = signal.SIGTERM if time.monotonic() - first < 2 else signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.05)


def sweep_stale() -> list[str]:
    """Remove vdfleet-<pid>-* namespaces and scratch dirs of dead owners (a killed pytest)."""
    removed = []
    names: set[str] = set()
    with contextlib.suppress(OSError):
        names.update(os.listdir("/run/netns"))
    with contextlib.suppress(OSError):
        names.update(os.listdir(tempfile.gettempdir()))
    for name in sorted(names):
        m = _NAME_RE.match(name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        if Path("/run/netns", name).exists():
            kill_netns(name)
            _run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(Path(tempfile.gettempdir(), name), ignore_errors=True)
        removed.append(name)
    return removed


@dataclass
class FleetHost:
    name: str  # h1, h2, ...
    suite: str  # bookworm, trixie
    addr: str
    netns: str
    dir: Path  # SCRATCH/NAME: upper/, work/, root/ (the mount point), logs
    image: Path
    keeper: subprocess.Popen[bytes] | None = None
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def mountpoint(self) -> Path:
        return self.dir / "root"

    @property
    def root(self) -> Path:
        """The host's root as the test process sees it (through the keeper's /proc entry)."""
        if self.keeper is None:
            raise FleetError(f"{self.name}: not started")
        return Path(f"/proc/{self.keeper.pid}/root") / str(self.mountpoint).lstrip("/")

    def path(self, abspath: str) -> Path:
        return self.root / abspath.lstrip("/")

    def prefix(self) -> list[str]:
        assert self.keeper is not None
        return ["nsenter", "-t", str(self.keeper.pid), "-m", "-n", "-u", "--",
                "chroot", str(self.mountpoint)]

    def run(self, argv: Sequence[str] | str, *, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        """ARGV (or a shell string) inside the host: its namespaces, its root."""
        cmd = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        return _run(self.prefix() + cmd, check=check, timeout=timeout, input=input)

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115
        try:
            self.daemons[name] = subprocess.Popen(
                self.prefix() + list(argv), env=_env(env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def log(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def _keeper_script(host: FleetHost, kvm: tuple[int, int] | None) -> str:
    q = shlex.quote
    r = q(str(host.mountpoint))
    lines = [
        "set -eu",
        f"hostname {q(host.name)}",
        f"mount -t overlay overlay -o lowerdir={q(str(host.image))},"
        f"upperdir={q(str(host.dir / 'upper'))},workdir={q(str(host.dir / 'work'))} {r}",
        f"mount -t proc proc {r}/proc",
        f"mount -t sysfs sysfs {r}/sys",
        f"mount -t tmpfs -o mode=0755,size=16m tmpfs {r}/dev",
    ]
    for node, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                               ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)):
        lines.append(f"mknod -m 666 {r}/dev/{node} c {major} {minor}")
    lines += [
        f"mkdir {r}/dev/pts {r}/dev/shm",
        f"mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts {r}/dev/pts",
        f"ln -s pts/ptmx {r}/dev/ptmx",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/dev/shm",
    ]
    if kvm is not None:  # 0660 root:kvm (the chroot's kvm group), as Debian's udev rule
        lines += [f"mknod -m 660 {r}/dev/kvm c {kvm[0]} {kvm[1]}",
                  f"chgrp \"$(chroot {r} getent group kvm | cut -d: -f3)\" {r}/dev/kvm"]
    lines += [
        f"mount -t tmpfs -o mode=0755 tmpfs {r}/run",
        f"mkdir -p {r}/run/sshd {r}/run/libvirt {r}/run/lock",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
        f"touch {q(str(host.dir / 'ready'))}",
        "exec sleep infinity",
    ]
    return "\n".join(lines) + "\n"


class Fleet:
    """Hosts named h1..hN, one per entry of SUITES, plus a controller namespace."""

    def __init__(self, suites: Sequence[str], images: Path) -> None:
        self.owner = os.getpid()
        self.tag = f"{PREFIX}{self.owner}"
        self.scratch = Path(tempfile.gettempdir(), f"{self.tag}-{os.urandom(3).hex()}")
        self.switch = f"{self.tag}-sw"
        self.controller = f"{self.tag}-ctl"
        self.hosts = [
            FleetHost(name=f"h{i}", suite=s, addr=f"{SUBNET}.{10 + i}",
                      netns=f"{self.tag}-h{i}", dir=self.scratch / f"h{i}",
                      image=images / f"fleet-{s}")
            for i, s in enumerate(suites, start=1)
        ]
        self.key = self.scratch / "id_ed25519"
        self.known_hosts = self.scratch / "known_hosts"
        self.ssh_wrapper = self.scratch / "ssh"
        self._namespaces: list[str] = []
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Fleet:
        t0 = time.monotonic()
        sweep_stale()
        for h in self.hosts:
            if not (h.image / "usr/sbin/libvirtd").exists():
                raise FleetError(f"{h.image}: no fleet image (run: make fleet-images)")
        try:
            self.scratch.mkdir(mode=0o755)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtdeb-fleet-test",
                  "-f", str(self.key)])
            self._network()
            self.timings["network"] = time.monotonic() - t0
            for h in self.hosts:
                self._start_keeper(h)
            for h in self.hosts:
                self._prepare_root(h)
            for h in self.hosts:
                self._start_daemons(h)
            for h in self.hosts:
                self._wait_daemons(h)
            self._write_ssh_wrapper()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - t0
        return self

    def _netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _network(self) -> None:
        self._netns(self.switch)
        _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        nodes = [(self.controller, "ctl", CONTROLLER_ADDR)]
        nodes += [(h.netns, h.name, h.addr) for h in self.hosts]
        for netns, short, addr in nodes:
            self._netns(netns)
            port = f"p-{short}"
            _run(["ip", "-n", self.switch, "link", "add", port, "type", "veth",
                  "peer", "name", "eth0", "netns", netns])
            _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(["ip", "-n", netns, "link", "set", "eth0", "up"])

    def _start_keeper(self, h: FleetHost) -> None:
        for sub in ("upper", "work", "root"):
            (h.dir / sub).mkdir(parents=True)
        kvm = None
        with contextlib.suppress(OSError):
            st = os.stat("/dev/kvm")
            kvm = (os.major(st.st_rdev), os.minor(st.st_rdev))
        (h.dir / "keeper.sh").write_text(_keeper_script(h, kvm))
        log = open(h.dir / "keeper.log", "wb")  # noqa: SIM115
        try:
            h.keeper = subprocess.Popen(
                ["ip", "netns", "exec", h.netns, "unshare", "-m", "-u", "--propagation",
                 "private", "sh", str(h.dir / "keeper.sh")],
                env=_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while not (h.dir / "ready").exists():
            if h.keeper.poll() is not None or time.monotonic() > deadline:
                raise FleetError(f"{h.name}: keeper failed\n{h.log('keeper')}")
            time.sleep(0.02)
        # ip netns exec execs unshare, which execs sh: the Popen pid is the keeper shell.

    def _prepare_root(self, h: FleetHost) -> None:
        etc = h.path("/etc")
        (etc / "hostname").write_text(h.name + "\n")
        hosts = "127.0.0.1 localhost\n" + "".join(f"{o.addr} {o.name}\n" for o in self.hosts)
        (etc / "hosts").write_text(hosts)
        h.run(["ssh-keygen", "-A"])
        conf = etc / "ssh/sshd_config.d/virtdeb-fleet.conf"
        conf.parent.mkdir(exist_ok=True)
        conf.write_text(f"ListenAddress {h.addr}\nPermitRootLogin prohibit-password\n"
                        "PasswordAuthentication no\nUseDNS no\n")
        ssh = h.path("/root/.ssh")
        ssh.mkdir(mode=0o700, exist_ok=True)
        pub = Path(f"{self.key}.pub").read_text()
        (ssh / "authorized_keys").write_text(pub)
        hostkey = (etc / "ssh/ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{h.addr} {hostkey[0]} {hostkey[1]}\n")

    def _start_daemons(self, h: FleetHost) -> None:
        h.run(["/usr/sbin/virtlogd", "-d"])
        h.spawn("libvirtd", ["/usr/sbin/libvirtd"],
                env={"LIBVIRT_LOG_OUTPUTS": "3:file:/var/log/libvirt/libvirtd.log"})
        h.spawn("sshd", ["/usr/sbin/sshd", "-D", "-e"])

    def _wait_daemons(self, h: FleetHost, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        sock = h.path("/run/libvirt/libvirt-sock")
        while True:
            for name, proc in h.daemons.items():
                if proc.poll() is not None:
                    raise FleetError(f"{h.name}: {name} exited with {proc.returncode}\n"
                                     f"{h.log(name)}")
            if sock.is_socket() and self._port_open(h):
                break
            if time.monotonic() > deadline:
                raise FleetError(f"{h.name}: libvirtd or sshd not ready after {timeout} s")
            time.sleep(0.05)
        # every host's known_hosts and key, so that one host reaches the others
        ssh = h.path("/root/.ssh")
        shutil.copyfile(self.key, ssh / "id_ed25519")
        os.chmod(ssh / "id_ed25519", 0o600)
        shutil.copyfile(self.known_hosts, ssh / "known_hosts")

    def _port_open(self, h: FleetHost) -> bool:
        res = _run(["ip", "netns", "exec", self.controller, "/usr/bin/python3", "-c",
                    "import socket,sys; socket.create_connection((sys.argv[1], 22), 1)",
                    h.addr], check=False)
        return res.returncode == 0

    def _write_ssh_wrapper(self) -> None:
        # libvirt's qemu+ssh:// runs "ssh": with command= it runs this one, which uses the
        # test's key and known_hosts (ssh reads ~/.ssh from the passwd entry, not $HOME).
        q = shlex.quote
        self.ssh_wrapper.write_text(
            "#!/bin/sh\n"
            f"exec ssh -i {q(str(self.key))} -o UserKnownHostsFile={q(str(self.known_hosts))}"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes"
            " -F /dev/null \"$@\"\n")
        os.chmod(self.ssh_wrapper, 0o755)

    def stop(self) -> list[str]:
        """Stop and remove everything; return what could not be removed (also raised)."""
        problems = []
        for h in self.hosts:
            for proc in [*h.daemons.values(), *([h.keeper] if h.keeper else [])]:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
        left = kill_netns(*self._namespaces)
        if left:
            problems.append(f"pids {left} survive SIGKILL")
        for h in self.hosts:
            for proc in [*h.daemons.values(), *([h.keeper] if h.keeper else [])]:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    problems.append(f"{h.name}: pid {proc.pid} did not exit")
        for netns in reversed(self._namespaces):
            res = _run(["ip", "netns", "del", netns], check=False)
            if res.returncode != 0 and Path("/run/netns", netns).exists():
                problems.append(f"ip netns del {netns}: {res.stderr.strip()}")
        self._namespaces.clear()
        if self.scratch.exists():
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self.scratch.exists():
            problems.append(f"{self.scratch} could not be removed")
        if problems:
            raise FleetError("fleet teardown incomplete: " + "; ".join(problems))
        return problems

    def leftovers(self) -> list[str]:
        """Namespaces, processes, mounts and directories of this fleet still present."""
        found = []
        with contextlib.suppress(OSError):
            found += [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(self.tag)]
        if self.scratch.exists():
            found.append(f"directory {self.scratch}")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if str(self.scratch).encode() in cmdline or self.tag.encode() in cmdline:
                    found.append(f"process {pid}: {cmdline.decode(errors='replace')[:80]}")
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if str(self.scratch) in line or self.tag in line:
                found.append(f"mount {line.split()[4]}")
        return found

    # ------------------------------------------------------------------ controller
    def ctl(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """ARGV in the controller namespace (the host's files, the fleet's network)."""
        return _run(["ip", "netns", "exec", self.controller, *argv], env=_env(env),
                    check=check, timeout=timeout)

    def uri(self, h: FleetHost, proxy: str | None = None) -> str:
        """qemu+ssh:// of H from the controller (its ssh through the test's wrapper)."""
        extra = f"&proxy={proxy}" if proxy else ""
        return f"qemu+ssh://root@{h.addr}/system?command={self.ssh_wrapper}{extra}"

    def inventory(self) -> str:
        lines = ["[libvirt_hosts]"]
        lines += [f"{h.name} ansible_host={h.addr} virtdeb_suite={h.suite}" for h in self.hosts]
        lines += [
            "",
            "[libvirt_hosts:vars]",
            "ansible_user=root",
            "ansible_python_interpreter=/usr/bin/python3",
            f"ansible_ssh_private_key_file={self.key}",
            f"ansible_ssh_common_args='-o UserKnownHostsFile={self.known_hosts}"
            " -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'",
        ]
        return "\n".join(lines) + "\n"


