"""Rule ``bridge``: bridge names, the capability xattr (real xattrs on tmp_path,
checked with getcap), the no-xattr filesystem (a real ramfs in a private mount
namespace), the file trigger after a qemu reinstall, and bridge.conf checks.
The bridge.conf edits themselves are golden cases in tests/cases/bridge/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from virtdeb import maint
from virtdeb.effects import ConflictError
from virtdeb.errors import UnsafePathError, UsageError
from virtdeb.host import CLEAN_PATH, Host
from virtdeb.journal import Journal
from virtdeb.rules import Status
from virtdeb.rules.bridge import (
    CONF,
    HELPER,
    MARKER,
    Bridge,
    acl,
    bridge_names,
    check_bridge_name,
)
from virtdeb.system import caps
from virtdeb.system.net import interface_name_problem

REAL_HELPER = Path(HELPER)
NET_ADMIN_EP = bytes.fromhex("0100000200100000000000000000000000000000")  # setcap's bytes


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True,
                          env={"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8"})


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("setting security.capability needs CAP_SETFCAP")


def make_root(tmp_path: Path, conf: str | None = None, allow: str = "br0") -> Host:
    root = tmp_path / "root"
    helper = root / HELPER.lstrip("/")
    helper.parent.mkdir(parents=True)
    if REAL_HELPER.exists():
        shutil.copyfile(REAL_HELPER, helper)  # copyfile: no xattrs copied
    else:
        helper.write_bytes(b"#!/bin/sh\n")
    helper.chmod(0o755)
    if conf is not None:
        (root / "etc/qemu").mkdir(parents=True)
        (root / CONF.lstrip("/")).write_text(conf)
    return Host(root=root, uri="test:///default", overrides={"bridge.allow": allow})


# -- names ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["br0", "virbr0", "br-0123456789a", "brü0", "br.x", "a",
                                  "x" * 15, "all"])
def test_valid_names(name: str) -> None:
    assert interface_name_problem(name) is None
    assert check_bridge_name(name) == name


@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"), ("x" * 16, "longer than 15 bytes"), ("brüüüüüüüüüüü", "longer than 15"),
    ("br/0", "'/'"), ("br:0", "':'"), (".", "'.' and '..'"), ("..", "'.' and '..'"),
    ("br 0", "whitespace"), ("br\t0", "whitespace"), ("br\n0", "whitespace"),
    ("br\x00", "non-printable"), ("br\x1b[31m", "non-printable"), ("br\u200b", "non-printable"),
    ("br#0", "'#'"),
])
def test_hostile_names(name: str, why: str) -> None:
    with pytest.raises(UsageError) as err:
        check_bridge_name(name)
    message = str(err.value)
    assert message.startswith("/etc/virtdeb/virtdeb.conf: [bridge] allow: ")
    assert repr(name) in message and why in message
    assert "\n" not in message


def test_bad_name_in_config_file_stops_check_and_plan(tmp_path: Path) -> None:
    host = make_root(tmp_path, allow="br0")
    conf = host.path("/etc/virtdeb/virtdeb.conf")
    conf.parent.mkdir(parents=True)
    conf.write_text("[bridge]\nallow = br0 ../etc\n")
    host = Host(root=host.root)
    for call in (lambda: bridge_names(host), Bridge(host).check, Bridge(host).plan):
        with pytest.raises(UsageError,
                           match=r"virtdeb.conf:2: \[bridge\] allow: '\.\./etc'.*contains '/'"):
            call()


# -- the xattr --------------------------------------------------------------------
def test_encode_matches_setcap() -> None:
    assert caps.with_cap(None, caps.CAP_NET_ADMIN) == NET_ADMIN_EP
    parsed = caps.parse(NET_ADMIN_EP)
    assert parsed is not None and parsed.has(caps.CAP_NET_ADMIN)
    assert caps.encode(parsed) == NET_ADMIN_EP
    v3 = caps.encode(caps.FileCaps(False, 1 << 13, 0, 1000))
    both = caps.with_cap(v3, caps.CAP_NET_ADMIN)
    assert len(both) == 24 and caps.parse(both) == caps.FileCaps(True, 1 << 12 | 1 << 13, 0,
                                                                   1000)
    assert caps.parse(b"junk") is None


def test_getcap_on_helper_copy(tmp_path: Path) -> None:
    needs_root()
    host = make_root(tmp_path)
    assert caps.getcap(host, HELPER) == ""
    changes = Bridge(host).plan()
    assert [c.target for c in changes] == [HELPER, MARKER, CONF]
    Journal(host).apply(changes, "test bridge")
    assert caps.getcap(host, HELPER) == "cap_net_admin=ep"
    assert os.getxattr(host.path(HELPER), caps.XATTR) == NET_ADMIN_EP
    assert Bridge(host).plan() == []
    assert [f.status for f in Bridge(host).check()] == [Status.PASS, Status.PASS]
    Journal(host).revert()
    assert caps.getcap(host, HELPER) == ""
    assert not host.path(MARKER).exists() and not host.path(CONF).exists()


def test_revert_restores_exact_previous_xattr(tmp_path: Path) -> None:
    needs_root()
    host = make_root(tmp_path)
    helper = host.path(HELPER)
    sh("setcap", "cap_sys_nice+p", str(helper))
    before = os.getxattr(helper, caps.XATTR)
    Journal(host).apply(Bridge(host).plan(), "test bridge")
    assert caps.getcap(host, HELPER) == "cap_net_admin,cap_sys_nice=ep"
    Journal(host).revert()
    assert os.getxattr(helper, caps.XATTR) == before
    assert caps.getcap(host, HELPER) == "cap_sys_nice=p"


def test_revert_refuses_a_capability_changed_since(tmp_path: Path) -> None:
    needs_root()
    host = make_root(tmp_path)
    Journal(host).apply(Bridge(host).plan(), "test bridge")
    sh("setcap", "cap_net_raw+ep", str(host.path(HELPER)))
    with pytest.raises(ConflictError, match="capabilities changed since virtdeb set them"):
        Journal(host).revert()
    assert caps.getcap(host, HELPER) == "cap_net_raw=ep"


def test_not_wanted_leaves_helper_alone(tmp_path: Path) -> None:
    host = make_root(tmp_path, allow="")
    assert Bridge(host).plan() == []
    [finding] = Bridge(host).check()
    assert finding.status is Status.NOTE


@pytest.mark.root  # a setuid-root helper
def test_setuid_helper_passes(tmp_path: Path) -> None:
    host = make_root(tmp_path, conf="allow br0\n")
    host.path(HELPER).chmod(0o4755)
    assert [f.status for f in Bridge(host).check()] == [Status.PASS, Status.PASS]
    assert Bridge(host).plan() == []


def test_trigger_after_qemu_reinstall(tmp_path: Path) -> None:
    """The reinstall drops the xattr; ``maint triggered HELPER`` puts it back, also when
    [bridge] allow is empty by then (virtdeb's marker says it set the capability)."""
    needs_root()
    host = make_root(tmp_path, conf="allow br0\n")
    Journal(host).apply(Bridge(host).plan(), "test bridge")
    helper = host.path(HELPER)
    new = helper.with_name("qemu-bridge-helper.dpkg-new")
    shutil.copyfile(helper, new)  # what dpkg does: a new file renamed over the old
    os.replace(new, helper)
    assert caps.getcap(host, HELPER) == ""
    assert maint.main(["triggered", HELPER], root=str(host.root)) == 0
    assert caps.getcap(host, HELPER) == "cap_net_admin=ep"
    # the undo of the first entry now finds the cap of the trigger's entry: it is the
    # newest entry that revert takes first
    entries = Journal(host).entries()
    assert entries[-1].command == "postinst triggered bridge"
    assert entries[-1].targets() == [HELPER]


def test_bridge_conf_deny_wins_warning(tmp_path: Path) -> None:
    host = make_root(tmp_path, conf="deny br0\nallow br0\n")
    wanting = Host(root=host.root, overrides={"bridge.allow": "br0"})
    statuses = {f.message: f.status for f in Bridge(wanting).check() if CONF in f.message}
    assert statuses == {f"{CONF} denies br0 (deny lines win over allow lines)": Status.WARN,
                        f"{CONF} allows br0": Status.PASS}


def test_bridge_conf_change_needs_consent_in_maint(tmp_path: Path) -> None:
    host = make_root(tmp_path, conf="allow br9\n")
    conf_change = [c for c in Bridge(host).plan() if c.target == CONF]
    assert conf_change and conf_change[0].foreign
    assert maint.refusal(host, conf_change[0]) == \
        "another package's file; allow it with dpkg-reconfigure virtdeb"
    consenting = Host(root=host.root, overrides={"virtdeb.allow_edit": "bridge.conf"})
    assert maint.refusal(consenting, conf_change[0]) is None


def test_unparsable_bridge_conf(tmp_path: Path) -> None:
    host = make_root(tmp_path, conf="allow br0 br1\n")
    with pytest.raises(Exception, match=r"/etc/qemu/bridge.conf:1"):
        Bridge(host).check()


def test_absent_bridge_conf_and_includes(tmp_path: Path) -> None:
    """An absent bridge.conf, or an absent file it includes, allows and denies nothing (it
    is not parsed); a symlink, even a dangling one, is refused as before."""
    host = make_root(tmp_path)
    conf = host.path(CONF)
    if conf.exists():
        conf.unlink()
    assert acl(host) == (set(), set())
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("include /etc/qemu/absent.conf\nallow br1\n")
    assert acl(host) == ({"br1"}, set())
    conf.unlink()
    conf.symlink_to("/etc/qemu/nowhere.conf")
    with pytest.raises(UnsafePathError):
        acl(host)


# -- a filesystem without xattrs -------------------------------------------------
NO_XATTR_SCRIPT = textwrap.dedent("""
    import json, os, shutil, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from virtdeb.host import Host
    from virtdeb.journal import Journal
    from virtdeb.rules.bridge import HELPER, Bridge
    root = Path(sys.argv[1])
    subprocess.run(["mount", "-t", "ramfs", "none", str(root)], check=True)
    helper = root / HELPER.lstrip("/")
    helper.parent.mkdir(parents=True)
    helper.write_bytes(b"#!/bin/sh\\n")
    helper.chmod(0o755)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "etc/qemu").mkdir(parents=True)
    (root / "etc/qemu/bridge.conf").write_text("allow br0\\n")
    out = {}
    for fallback in ("no", "yes"):
        settings = {"bridge.allow": "br0", "bridge.setuid_fallback": fallback}
        host = Host(root=root, overrides=settings)
        out[fallback] = {"check": [[f.status.value, f.message, f.hint]
                                   for f in Bridge(host).check()],
                         "plan": [c.diff() for c in Bridge(host).plan()]}
    Journal(host).apply(Bridge(host).plan(), "test")
    out["mode_after"] = oct(helper.stat().st_mode & 0o7777)
    out["check_after"] = [f.status.value for f in Bridge(host).check()]
    Journal(host).revert()
    out["mode_reverted"] = oct(helper.stat().st_mode & 0o7777)
    print(json.dumps(out))
""")


def test_filesystem_without_xattrs(tmp_path: Path) -> None:
    needs_root()
    if shutil.which("unshare", path=CLEAN_PATH) is None:
        pytest.skip("unshare not installed")
    root = tmp_path / "ramfs"
    root.mkdir()
    script = tmp_path / "no_xattr.py"
    script.write_text(NO_XATTR_SCRIPT)
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                           str(script), str(root), repo], capture_output=True, text=True,
                          env={"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8"}, check=False)
    # inside a container (autopkgtest's unshare runner) no private mount namespace
    if proc.returncode != 0 and proc.stderr.startswith("unshare:"):
        pytest.skip(f"no mount namespace: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    [[status, message, hint], conf] = out["no"]["check"]
    assert conf[0] == "PASS"
    assert status == "WARN" and "has no extended attributes" in message
    assert "setuid_fallback = yes" in hint
    assert out["no"]["plan"] == []
    assert out["yes"]["plan"] == [f"dpkg-statoverride --update --add root root 4755 {HELPER}\n"]
    assert out["mode_after"] == "0o4755" and out["check_after"] == ["PASS", "PASS"]
    assert out["mode_reverted"] == "0o755"
    assert not any(root.iterdir()), "the ramfs must stay inside the private mount namespace"
