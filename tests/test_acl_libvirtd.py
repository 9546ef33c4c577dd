"""``virtdeb acl`` end to end: a REAL libvirtd with ``access_drivers = [ "polkit" ]``
asks a REAL polkitd over a private system bus, and unprivileged users' real libvirt
calls are allowed or refused by the rules file virtdeb wrote.

The files come from virtdeb's own code path: ``virtdeb acl grant ... --root FAKE
--set virtdeb.allow_edit=libvirtd.conf`` on a fake root holding a copy of the host's
libvirtd.conf, then copied into the private daemon's /etc/libvirt and polkitd's
rules directory before either daemon starts. The D-Bus socket is
LIBVIRTD_SCRATCH/run/dbus/system_bus_socket, i.e. the default
/run/dbus/system_bus_socket inside libvirtd's mount namespace (tests/harness/libvirtd.py
mounts the scratch run/ over /run): libvirtd finds it with no configuration.

Users (host accounts from base-passwd; ``libvirt`` membership only in polkitd's view
of /etc/group): bin = group libvirt + ``--read-only``; man = ``--read-only``;
daemon = ``--domain web1``; sys = group libvirt, no grant; games = nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.libvirtd import PrivateLibvirtd
from tests.harness.libvirtd import skip_reason as libvirtd_skip_reason
from tests.harness.plugin import daemon_or_skip
from tests.harness.polkit import Polkit, private_polkit
from tests.harness.polkit import skip_reason as polkit_skip_reason
from tests.harness.procs import PATH, is_gone
from virtdeb.cli import main
from virtdeb.commands.acl import LIBVIRTD_CONF, RULES_FILE, polkit_driver_on
from virtdeb.host import Host

OK = 0
DENIED = 88          # VIR_ERR_ACCESS_DENIED: the polkit access driver said no
READ_ONLY = 29       # VIR_ERR_OPERATION_DENIED: "read only access prevents ..."
AUTH_FAILED = 45     # VIR_ERR_AUTH_FAILED: polkit said no to org.libvirt.unix.manage
NO_DISK = 38         # VIR_ERR_SYSTEM_ERROR: allowed to start, but MISSING_DISK is missing
NO_AGENT = 94        # VIR_ERR_AUTH_UNAVAILABLE: org.libvirt.unix.manage needs a password
MISSING_DISK = "/nonexistent/virtdeb-test.img"
HOST_PATHS = ("/etc/polkit-1", "/etc/libvirt/libvirtd.conf", "/run/dbus", "/var/lib/polkit-1")

# Run as the user, fed on stdin: open URI (read-only socket when argv[2] is "ro"), do
# each [op, arg] of argv[3], print {"open": code, "ops": [[code, value], ...]}.
CLIENT = r"""
import json, sys
import libvirt
libvirt.registerErrorHandler(lambda ctx, err: None, None)
uri, mode, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def run(conn, op, arg):
    if op == "list":
        return sorted(d.name() for d in conn.listAllDomains())
    if op == "define":
        return conn.defineXML(arg).name()
    dom = conn.lookupByName(arg)
    if op == "dumpxml":
        return dom.XMLDesc().split("<name>")[1].split("</name>")[0]
    if op == "start":
        return dom.create()
    if op == "autostart":
        return dom.setAutostart(1)
    if op == "undefine":
        return dom.undefine()
    if op == "redefine":
        return conn.defineXML(dom.XMLDesc()).name()
    raise ValueError(op)

try:
    conn = libvirt.openReadOnly(uri) if mode == "ro" else libvirt.open(uri)
except libvirt.libvirtError as e:
    print(json.dumps({"open": e.get_error_code(), "ops": []}))
    sys.exit(0)
results = []
for op, arg in ops:
    try:
        results.append([0, run(conn, op, arg)])
    except libvirt.libvirtError as e:
        results.append([e.get_error_code(), None])
print(json.dumps({"open": 0, "ops": results}))
"""


def domain_xml(name: str) -> str:
    """A KVM domain that can never really start (its disk is missing): a start that the
    ACL wrongly allowed fails in libvirt, before any qemu runs, with another error code."""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
            f"<source file='{MISSING_DISK}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>")


def granted_root(tmp_path: Path) -> Path:
    """A fake root with the host's libvirtd.conf, after virtdeb's own grants."""
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(Path(__file__).parent / "data/etc/passwd", root / "etc/passwd")
    shutil.copy2(LIBVIRTD_CONF, root / LIBVIRTD_CONF.lstrip("/"))
    r = ["--root", str(root)]
    assert main(["acl", "grant", "bin", "--read-only", *r,
                 "--set", "virtdeb.allow_edit=libvirtd.conf"]) == 0
    assert main(["acl", "grant", "man", "--read-only", *r]) == 0
    assert main(["acl", "grant", "daemon", "--domain", "web1", *r]) == 0
    assert polkit_driver_on(Host(root=root))
    return root


class Session:
    """Unprivileged users' libvirt calls against the private daemon."""

    def __init__(self, daemon: PrivateLibvirtd) -> None:
        self.daemon = daemon

    def as_user(self, user: str, ops: list[tuple[str, str]], read_only_socket: bool = False,
                ) -> tuple[int, list[tuple[int, Any]]]:
        sock = self.daemon.socket.with_name("libvirt-sock-ro") if read_only_socket \
            else self.daemon.socket
        uri = f"qemu+unix:///system?socket={sock}"
        proc = subprocess.run(
            ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
             "/usr/bin/python3", "-", uri, "ro" if read_only_socket else "rw", json.dumps(ops)],
            input=CLIENT, capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": PATH, "HOME": "/nonexistent", "LC_ALL": "C.UTF-8"})
        assert proc.returncode == 0, proc.stderr + self.daemon.logs()
        out = json.loads(proc.stdout)
        return out["open"], [(code, value) for code, value in out["ops"]]


def host_state() -> dict[str, object]:
    """What the host has at the paths a private polkit/libvirtd must never touch."""
    state: dict[str, object] = {}
    for p in map(Path, HOST_PATHS):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        state[str(p)] = [(str(f), f.read_bytes() if f.is_file() else f.exists()) for f in files]
    return state


@contextlib.contextmanager
def acl_libvirtd(tmp_path: Path) -> Iterator[tuple[PrivateLibvirtd, Polkit]]:
    reason = polkit_skip_reason() or libvirtd_skip_reason()
    if reason:
        pytest.skip(reason)
    root = granted_root(tmp_path)
    rules = (root / RULES_FILE.lstrip("/")).read_bytes()
    with private_polkit() as pk:
        def before_start(scratch: Path) -> None:
            shutil.copy2(root / LIBVIRTD_CONF.lstrip("/"), scratch / LIBVIRTD_CONF.lstrip("/"))
            pk.start(rules, libvirt_members=["bin", "sys"],
                     bus_socket=scratch / "run/dbus/system_bus_socket")

        with daemon_or_skip(before_start=before_start) as daemon:
            yield daemon, pk


@pytest.mark.integration
def test_libvirtd_obeys_virtdeb_grants(tmp_path: Path) -> None:
    host_before = host_state()
    with acl_libvirtd(tmp_path) as (daemon, pk):
        pids = daemon.pids() + pk.pids()
        conn = daemon.connect()  # root: polkitd allows uid 0 everything
        for name in ("web1", "web2"):
            conn.defineXML(domain_xml(name))
        s = Session(daemon)
        both = ["web1", "web2"]

        # --read-only, group libvirt: virtdeb's 50-virtdeb.rules decides before the stock
        # 60-libvirt.rules: no read-write connection; the read-only one can look only.
        assert s.as_user("bin", [("list", "")]) == (AUTH_FAILED, [])
        assert s.as_user("bin", [("list", ""), ("dumpxml", "web1"),
                                 ("define", domain_xml("web3"))], read_only_socket=True) == (
            OK, [(OK, both), (OK, "web1"), (READ_ONLY, None)])
        # --read-only, not in group libvirt: virtdeb's rules refuse the read-write socket
        # (a "no", not the stock policy's password question); the read-only one works.
        assert s.as_user("man", [("list", "")]) == (AUTH_FAILED, [])
        assert s.as_user("man", [("list", ""), ("dumpxml", "web2"),
                                 ("define", domain_xml("web3"))], read_only_socket=True) == (
            OK, [(OK, both), (OK, "web2"), (READ_ONLY, None)])

        # --domain web1: web1 only; web2 is not even visible.
        assert s.as_user("daemon", [("list", ""), ("dumpxml", "web1"), ("autostart", "web1"),
                                    ("start", "web1"), ("redefine", "web1"),
                                    ("dumpxml", "web2"), ("autostart", "web2"),
                                    ("start", "web2"), ("define", domain_xml("web2")),
                                    ("define", domain_xml("web3")), ("undefine", "web2")]) == (
            OK, [(OK, ["web1"]), (OK, "web1"), (OK, 0), (NO_DISK, None), (OK, "web1"),
                 (DENIED, None), (DENIED, None), (DENIED, None), (DENIED, None),
                 (DENIED, None), (DENIED, None)])
        assert conn.lookupByName("web1").autostart() == 1
        assert conn.lookupByName("web2").autostart() == 0

        # no grant, group libvirt: all of libvirt's API, as README.Debian says.
        assert s.as_user("sys", [("list", ""), ("define", domain_xml("web3")),
                                 ("undefine", "web3")]) == (
            OK, [(OK, both), (OK, "web3"), (OK, 0)])
        # no grant, not in group libvirt: the stock policy wants root's password.
        assert s.as_user("games", [("list", "")]) == (NO_AGENT, [])

        assert s.as_user("daemon", [("undefine", "web1")]) == (OK, [(OK, 0)])
        assert sorted(d.name() for d in conn.listAllDomains()) == ["web2"]
        conn.close()
    left = [p for p in pids if not is_gone(p)]
    assert not left, f"still running after teardown: {left}"
    assert host_state() == host_before
