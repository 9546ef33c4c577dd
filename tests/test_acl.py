"""``virtdeb acl``: the polkit rules file on fake roots, and its decisions by a REAL
polkitd (bookworm's 122) on a private dbus-daemon, asked with the real ``pkcheck``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.golden import snapshot
from tests.harness.polkit import Polkit, private_polkit, skip_reason
from virtdeb.cli import main
from virtdeb.commands.acl import RULES_FILE, parse, render

HOSTILE = ['we"b', "a\\b", "</x>'); polkit.x=1; //", "ünï", "a\u2028b", "x" * 200]


def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc/libvirt").mkdir(parents=True)
    shutil.copy2(Path(__file__).parent / "data/etc/passwd", root / "etc/passwd")
    shutil.copy2(Path(__file__).parent / "cases/debug/libvirtd.conf",
                 root / "etc/libvirt/libvirtd.conf")
    return root


def test_render_parse_roundtrip_hostile_names() -> None:
    grants = [{"user": "daemon", "domains": HOSTILE}, {"user": "bin", "read_only": True}]
    data = render(grants)
    data.decode("ascii")  # every non-ASCII name escaped
    assert "\u2028".encode() not in data
    assert parse(data) == sorted(grants, key=lambda g: str(g["user"]))


def test_grant_without_consent_leaves_libvirtd_conf(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    conf = (root / "etc/libvirt/libvirtd.conf").read_bytes()
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert 'access_drivers = [ "polkit" ]' in out  # says what to do
    assert (root / "etc/libvirt/libvirtd.conf").read_bytes() == conf
    assert (root / RULES_FILE.lstrip("/")).is_file()
    assert (root / "var/lib/virtdeb/created" / RULES_FILE.lstrip("/")).is_file()


def test_created_marker_comes_before_the_rules_file(tmp_path: Path) -> None:
    """An apply interrupted between the two leaves a marker, never an unmarked file."""
    from virtdeb.edit import CREATED_DIR
    from virtdeb.host import Host
    from virtdeb.journal import Journal

    root = fake_root(tmp_path)
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 0
    [entry] = Journal(Host(root=root)).entries()
    assert entry.targets() == [CREATED_DIR + RULES_FILE, RULES_FILE]


def test_grant_with_consent_revoke_revert(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    conf = root / "etc/libvirt/libvirtd.conf"
    consent = ["--set", "virtdeb.allow_edit=libvirtd.conf"]
    assert main(["acl", "grant", "daemon", "--domain", "web1", "we\"b2", "--root", str(root),
                 *consent]) == 0
    assert conf.read_text().splitlines()[-1] == 'access_drivers = [ "polkit"]'
    assert main(["acl", "grant", "daemon", "--domain", "web3", "--root", str(root)]) == 0
    assert main(["acl", "grant", "bin", "--read-only", "--root", str(root)]) == 0
    capsys.readouterr()
    assert main(["acl", "show", "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "bin: read-only", 'daemon: domains "web1", "we\\"b2", "web3"',
        "libvirtd access driver: polkit (grants apply)"]
    assert main(["acl", "revoke", "bin", "--root", str(root)]) == 0
    for _ in range(4):
        assert main(["revert", "--root", str(root)]) == 0
    assert snapshot(root) == before


@pytest.mark.parametrize("user", ["root;id", "a b", "../x", "ünï", "", "nosuchuser"])
def test_bad_user_refused_nothing_written(tmp_path: Path, user: str) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    assert main(["acl", "grant", "--read-only", "--root", str(root), "--", user]) == 2
    assert snapshot(root) == before


def test_bad_domain_refused(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    before = snapshot(root)
    assert main(["acl", "grant", "daemon", "--domain", "a/b", "--root", str(root)]) == 2
    assert main(["acl", "grant", "daemon", "--domain", "", "--root", str(root)]) == 2
    assert snapshot(root) == before


def test_foreign_rules_file_is_not_overwritten(tmp_path: Path) -> None:
    root = fake_root(tmp_path)
    rules = root / RULES_FILE.lstrip("/")
    rules.parent.mkdir(parents=True)
    rules.write_text("polkit.addRule(function() {});\n")
    assert main(["acl", "grant", "daemon", "--read-only", "--root", str(root)]) == 2
    assert rules.read_text() == "polkit.addRule(function() {});\n"


# -- a real polkitd --------------------------------------------------------------
@pytest.fixture
def polkit() -> Iterator[Polkit]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with private_polkit() as pk:
        yield pk


@pytest.mark.integration
def test_real_polkitd_decisions(polkit: Polkit) -> None:
    hostile = 'we"b2\u2028</x>'
    rules = render([{"user": "daemon", "domains": ["web1", hostile]},
                    {"user": "bin", "read_only": True}])
    polkit.start(rules, libvirt_members=["sys", "bin"])
    api = "org.libvirt.api."
    # --domain: those domains fully, nothing else but looking at the connection
    assert polkit.allowed("daemon", "org.libvirt.unix.manage")
    assert polkit.allowed("daemon", api + "domain.start", "web1")
    assert polkit.allowed("daemon", api + "domain.start", hostile)
    assert not polkit.allowed("daemon", api + "domain.start", "web2")
    assert not polkit.allowed("daemon", api + "domain.getattr", "web2")
    assert polkit.allowed("daemon", api + "connect.search-domains")
    assert not polkit.allowed("daemon", api + "network.start")
    assert not polkit.allowed("daemon", api + "connect.write")
    # --read-only: even though bin is in group libvirt, it may only look
    assert polkit.allowed("bin", api + "domain.getattr", "web1")
    assert polkit.allowed("bin", api + "domain.read", "web1")
    assert not polkit.allowed("bin", api + "domain.start", "web1")
    assert not polkit.allowed("bin", api + "domain.read-secure", "web1")
    # no grant, group libvirt: all of the API, as README.Debian says
    assert polkit.allowed("sys", api + "domain.start", "anything")
    assert polkit.allowed("sys", api + "network.write")
    # unrelated actions are not ours
    assert not polkit.allowed("sys", "org.freedesktop.packagekit.package-install")


@pytest.mark.integration
def test_real_polkitd_without_virtdeb_rules(polkit: Polkit) -> None:
    """The same questions without our grants: the defaults deny what the grants allow
    (so the decisions above come from virtdeb's file)."""
    polkit.start(render([]), libvirt_members=[])
    api = "org.libvirt.api."
    assert not polkit.allowed("daemon", api + "domain.start", "web1")
    assert not polkit.allowed("sys", api + "domain.start", "anything")
    assert polkit.allowed("bin", api + "domain.getattr", "web1")  # policy default: yes
