"""A fleet of libvirt "hosts" on one machine, for tests/test_fleet.py.

Each host is what an admin's machine is to Ansible: its own network namespace with one
address, its own root, its own sshd and its own libvirtd.

Host: a ``PrivateLibvirtd(root=.cache/fleet-SUITE, overlay=True)`` (tests/harness/libvirtd.py,
chroot mode): the image is the lower layer of an overlay (shared, never changed) with the
host's own upper layer; the chroot's own libvirtd runs in a private network and mount
namespace. sshd runs beside it in the same namespaces and chroot (``popen_in_ns``), so
``qemu+ssh://`` through the remote virt-ssh-helper or nc reaches that libvirtd's
/run/libvirt/libvirt-sock. The host's files are read and written through
``/proc/LIBVIRTD/root`` (``FleetHost.path``); what must be there before the daemons start
(sshd's ListenAddress, authorized_keys) goes into the upper layer.

Network: a "switch" namespace ``vdfleet-<pid>-sw`` holds a bridge; every host and the
controller (``vdfleet-<pid>-ctl``, where ansible, ssh and virsh run) get a veth pair whose
outer end is created directly in the switch namespace and enslaved to the bridge. The
addresses are from a /24 of 198.18.0.0/15 (RFC 2544, never routed) that overlaps nothing
of the machine's own network, and exist only inside those namespaces: the machine's own
namespace gets no interface, no address, no route.

Teardown (``stop()``, also on errors, idempotent): every host's PrivateLibvirtd.stop()
(every process of its namespace: libvirtd, virtlogd, sshd and its sessions, dnsmasq; the
kernel drops the overlay and the other mounts with the namespace), then every process of
the controller and switch namespaces (ssh ControlPersist masters), ``ip netns del``, and the
scratch directory. ``leftovers()`` says what is still there (namespaces, processes, mounts,
directories).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import cpucaps, procs
from tests.harness.libvirtd import PrivateLibvirtd
from tests.harness.procs import clean_env, kill_netns_processes

PREFIX = "vdfleet-"
# The fleet's /24 comes from 198.18.0.0/15 (RFC 2544, benchmarking, routed nowhere): the
# first one that overlaps no route and no address of the machine (whose own network may
# well be a documentation prefix: this one's is 192.0.2.0/24).
CANDIDATES = ipaddress.ip_network("198.18.0.0/15")
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")


class FleetError(Exception):
    pass


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 120,
         env: dict[str, str] | None = None, input: str | None = None,  # noqa: A002
         ) -> subprocess.CompletedProcess[str]:
    res = procs.run(argv, env=env, timeout=timeout, input=input)
    if check and res.returncode != 0:
        raise FleetError(f"{shlex.join(argv)}: exit {res.returncode}\n{res.stdout}{res.stderr}")
    return res


def pick_subnet() -> ipaddress.IPv4Network:
    """A /24 of CANDIDATES that no route or address of this machine's namespace touches."""
    used = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"],
                 ["ip", "-j", "-4", "addr", "show"]):
        data = json.loads(_run(argv).stdout or "[]")
        for entry in data:
            dst = entry.get("dst")
            if dst and dst != "default":
                used.append(ipaddress.ip_network(dst, strict=False))
            for a in entry.get("addr_info", []):
                used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for net in CANDIDATES.subnets(new_prefix=24):
        if not any(net.overlaps(u) for u in used):
            return net
    raise FleetError(f"every /24 of {CANDIDATES} overlaps a route or address of this machine")


def sweep_stale() -> list[str]:
    """Remove vdfleet-<pid>-* namespaces and scratch dirs of dead owners (a killed pytest).

    (The hosts' vdtest-<pid>-* namespaces are swept by PrivateLibvirtd itself.)
    """
    return procs.sweep_dead_owners(_NAME_RE, Path(tempfile.gettempdir()))


@dataclass
class FleetHost:
    name: str  # h1, h2, ...
    suite: str  # bookworm, trixie
    addr: str
    image: Path
    cpu: str | None = None  # a profile of tests/harness/cpucaps.py; None: this machine's
    daemon: PrivateLibvirtd | None = None
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def netns(self) -> str:
        assert self.daemon is not None
        return self.daemon.netns

    @property
    def root(self) -> Path:
        """The host's root as the test process sees it (/proc/LIBVIRTD/root)."""
        if self.daemon is None:
            raise FleetError(f"{self.name}: not started")
        return self.daemon.root_view

    def path(self, abspath: str) -> Path:
        return self.root / abspath.lstrip("/")

    def run(self, argv: Sequence[str] | str, *, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        """ARGV (or a shell string) inside the host: its namespaces, its root."""
        assert self.daemon is not None
        return _run(self.daemon.ns_argv(argv), check=check, timeout=timeout, input=input)


class Fleet:
    """Hosts named h1..hN, one per entry of SUITES, plus a controller namespace."""

    def __init__(self, suites: Sequence[str], images: Path,
                 cpus: Sequence[str | None] = ()) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.scratch = Path(tempfile.gettempdir(), f"{self.tag}-{os.urandom(3).hex()}")
        self.switch = f"{self.tag}-sw"
        self.controller = f"{self.tag}-ctl"
        self.subnet = pick_subnet()
        self.controller_addr = str(self.subnet[2])
        cpus = list(cpus) or [None] * len(suites)
        self.hosts = [FleetHost(name=f"h{i}", suite=s, addr=str(self.subnet[10 + i]),
                                image=images / f"fleet-{s}", cpu=cpu)
                      for i, (s, cpu) in enumerate(zip(suites, cpus, strict=True), start=1)]
        self._probed: dict[Path, Path] = {}  # image -> its qemu capabilities, probed once
        self.key = self.scratch / "id_ed25519"
        self.known_hosts = self.scratch / "known_hosts"
        self.ssh_wrapper = self.scratch / "ssh"
        self.ssh_log = self.scratch / "ssh.log"  # the wrapper's argv, one line per call
        self._namespaces: list[str] = []
        self._host_dirs: list[str] = []  # the PrivateLibvirtd scratch dirs, for leftovers()
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
            if not (h.image / "usr/sbin/sshd").exists():
                raise FleetError(f"{h.image}: no fleet image (run: make fleet-images)")
        try:
            self.scratch.mkdir(mode=0o755)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtdeb-fleet-test",
                  "-f", str(self.key)])
            self._netns(self.switch)
            _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
            self._netns(self.controller)
            self._plug(self.controller, "ctl", self.controller_addr)
            for h in self.hosts:
                self._start_host(h)
            for h in self.hosts:
                self._wait_sshd(h)
            for h in self.hosts:  # every host can reach the others (qemu+ssh:// between them)
                ssh = h.path("/root/.ssh")
                shutil.copyfile(self.key, ssh / "id_ed25519")
                os.chmod(ssh / "id_ed25519", 0o600)
                shutil.copyfile(self.known_hosts, ssh / "known_hosts")
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

    def _plug(self, netns: str, short: str, addr: str) -> None:
        """A veth from the switch's bridge to NETNS, eth0 there with ADDR/24."""
        port = f"p-{short}"
        _run(["ip", "-n", self.switch, "link", "add", port, "type", "veth",
              "peer", "name", "eth0", "netns", netns])
        _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])

    def _start_host(self, h: FleetHost) -> None:
        pub = Path(f"{self.key}.pub").read_text()

        def before_start(scratch: Path) -> None:  # the overlay's upper layer
            etc = scratch / "upper/etc"
            (etc / "ssh/sshd_config.d").mkdir(parents=True)
            (etc / "ssh/sshd_config.d/virtdeb-fleet.conf").write_text(
                f"ListenAddress {h.addr}\nPermitRootLogin prohibit-password\n"
                "PasswordAuthentication no\nUseDNS no\n")
            (etc / "hosts").write_text(
                "127.0.0.1 localhost\n" + "".join(f"{o.addr} {o.name}\n" for o in self.hosts))
            ssh = scratch / "upper/root/.ssh"
            ssh.mkdir(mode=0o700, parents=True)
            (scratch / "upper/root").chmod(0o700)
            (ssh / "authorized_keys").write_text(pub)

        caps = self._edited_caps(h) if h.cpu else None
        h.daemon = PrivateLibvirtd(root=h.image, overlay=True, before_start=before_start,
                                   start_timeout=60, caps_cache=caps)
        self._host_dirs.append(str(h.daemon.scratch))
        with cpucaps.one_core():
            h.daemon.start()
        if h.cpu:
            conn = h.daemon.connect()
            try:
                cpucaps.check_profile(conn, cpucaps.PROFILES[h.cpu])
            finally:
                conn.close()
        self._plug(h.netns, h.name, h.addr)
        h.run(["ssh-keygen", "-A"])
        h.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])  # /run is the daemon's tmpfs
        hostkey = h.path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        with self.known_hosts.open("a") as f:
            f.write(f"{h.addr} {hostkey[0]} {hostkey[1]}\n")
        log = open(self.scratch / f"sshd-{h.name}.log", "wb")  # noqa: SIM115
        try:
            h.sshd = h.daemon.popen_in_ns(["/usr/sbin/sshd", "-D", "-e"], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def _edited_caps(self, h: FleetHost) -> str:
        """The qemu capabilities of H's image, probed once per image by a daemon of its
        own on one core, edited to H's CPU profile (cpu_map of the image's libvirt)."""
        assert h.cpu is not None
        probed = self._probed.get(h.image)
        if probed is None:
            probe = PrivateLibvirtd(root=h.image, overlay=True, start_timeout=60)
            self._host_dirs.append(str(probe.scratch))
            probed = cpucaps.probe_caps(self.scratch / f"probed-{h.image.name}", probe)
            self._probed[h.image] = probed
        edited = self.scratch / f"caps-{h.name}"
        cpucaps.edit_caps(probed, edited, cpucaps.PROFILES[h.cpu], h.image)
        return str(edited)

    def _wait_sshd(self, h: FleetHost, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        assert h.sshd is not None
        while True:
            if h.sshd.poll() is not None:
                log = (self.scratch / f"sshd-{h.name}.log").read_text(errors="replace")
                raise FleetError(f"{h.name}: sshd exited with {h.sshd.returncode}\n{log}")
            res = _run(["ip", "netns", "exec", self.controller, "/usr/bin/python3", "-c",
                        "import socket,sys; socket.create_connection((sys.argv[1], 22), 1)",
                        h.addr], check=False)
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise FleetError(f"{h.name}: sshd not listening on {h.addr}:22 after"
                                 f" {timeout} s")
            time.sleep(0.05)

    def _write_ssh_wrapper(self) -> None:
        # libvirt's qemu+ssh:// runs "ssh": with command= it runs this one, which uses the
        # test's key and known_hosts (ssh reads ~/.ssh from the passwd entry, not $HOME).
        q = shlex.quote
        self.ssh_wrapper.write_text(
            "#!/bin/sh\n"
            f"printf '%s\\n' \"$*\" >> {q(str(self.ssh_log))}\n"
            f"exec ssh -i {q(str(self.key))} -o UserKnownHostsFile={q(str(self.known_hosts))}"
            " -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes"
            " -F /dev/null \"$@\"\n")
        os.chmod(self.ssh_wrapper, 0o755)

    def stop(self) -> None:
        """Stop and remove everything; raise FleetError naming what could not be removed."""
        problems: list[str] = []

        def stop_host(h: FleetHost) -> None:
            if h.daemon is not None:
                try:
                    h.daemon.stop()
                except Exception as exc:  # noqa: BLE001 - go on with the others
                    problems.append(f"{h.name}: {exc}")

        # the clients first (ssh masters, sshd and its sessions, virt-ssh-helper): a
        # libvirtd with open connections may take long to stop
        kill_netns_processes(*self._namespaces)
        hosts_ns = [h.netns for h in self.hosts if h.daemon is not None and h.daemon.pid]
        daemons = [h.daemon.pid for h in self.hosts if h.daemon is not None and h.daemon.pid]
        kill_netns_processes(*hosts_ns, spare=[p for p in daemons if p is not None])
        # in parallel: each stop waits up to 5 s for init to reap the daemons' orphans
        threads = [threading.Thread(target=stop_host, args=(h,)) for h in self.hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for h in self.hosts:
            if h.sshd is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.sshd.wait(timeout=10)
        left = kill_netns_processes(*self._namespaces)
        if left:
            problems.append(f"pids {left} survive SIGKILL")
        for netns in reversed(self._namespaces):
            res = _run(["ip", "netns", "del", netns], check=False)
            if res.returncode != 0 and Path("/run/netns", netns).exists():
                problems.append(f"ip netns del {netns}: {res.stderr.strip()}")
        self._namespaces.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.scratch.exists():
            problems.append(f"{self.scratch} could not be removed")
        if problems:
            raise FleetError("fleet teardown incomplete: " + "; ".join(problems))

    def leftovers(self) -> list[str]:
        """Namespaces, processes, mounts and directories of this fleet still present."""
        marks = [self.tag, str(self.scratch), *self._host_dirs,
                 *(Path(d).name for d in self._host_dirs)]
        found = []
        with contextlib.suppress(OSError):
            found += [f"netns {n}" for n in os.listdir("/run/netns")
                      if any(m in n for m in marks)]
        found += [f"directory {d}" for d in [str(self.scratch), *self._host_dirs]
                  if Path(d).exists()]
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if any(m.encode() in cmdline for m in marks):
                    found.append(f"process {pid}: {cmdline.decode(errors='replace')[:80]}")
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if any(m in line for m in marks):
                found.append(f"mount {line.split()[4]}")
        return found

    # ------------------------------------------------------------------ controller
    def ctl(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """ARGV in the controller namespace (the host's files, the fleet's network)."""
        return _run(["ip", "netns", "exec", self.controller, *argv], env=clean_env(env),
                    check=check, timeout=timeout)

    def uri(self, h: FleetHost, proxy: str | None = None) -> str:
        """qemu+ssh:// of H from the controller (its ssh through the test's wrapper).

        PROXY: libvirt's remote side, ``native`` (virt-ssh-helper) or ``netcat`` (nc -U).
        """
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
