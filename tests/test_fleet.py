"""The fleet, for real: three hosts, Ansible over SSH, libvirt over qemu+ssh://.

h1 and h3 are trixie, h2 bookworm (a fleet in the middle of an upgrade): each its own
network namespace on a private bridge, its own overlay root from .cache/fleet-SUITE, its
own sshd and libvirtd (tests/harness/fleet.py). The controller namespace runs
ansible-playbook with the collection built from ansible/ and installed into a scratch
collections path, and the .deb built by `make package`.

The hosts' CPUs do not depend on this machine's: each libvirtd gets edited qemu
capabilities (tests/harness/cpucaps.py). h1 and h3 are Intel Haswells with TSX; h2 is the
same Haswell after the microcode update of README.Debian, without hle and rtm. So the
guest that cannot move is the seed's own: ``Haswell`` with ``fallback='forbid'`` on h1.

The tests share the fleet (module scope) and each brings it to the state it needs first
(the role installed: the ``installed`` fixture, run once; the role's variables converged),
so any one of them runs alone (``-k``) or in any order: the role twice (the second run
changes nothing), drift caught by --check --diff and repaired, a debconf answer changed
(dpkg-reconfigure runs, the change reaches the hosts), h3 purged and installed again from
an apt repository, the local facts read back, the fleet baseline over qemu+ssh:// with a
guest every host accepts and one that cannot move to h2, the play failing on a doctor
FAIL only when asked, and at the end nothing left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fleet import Fleet
from tests.harness.procs import PATH

REPO = Path(__file__).resolve().parent.parent
SUITES = ["trixie", "bookworm", "trixie"]
CPUS = ["intel-haswell-tsx", "intel-haswell", "intel-haswell-tsx"]
# README.Debian's guest, which h2 (after the microcode update) can no longer give
SEED_MODEL, SEED_MISSING = "Haswell", ["hle", "rtm"]
RULES = ["network", "ssh", "bridge"]
RECAP = re.compile(r"^(h\d+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.M)

pytestmark = pytest.mark.integration


def _deb() -> Path:
    version = subprocess.run(["dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"),
                              "-S", "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return REPO / ".build" / f"virtdeb_{version}_all.deb"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the fleet needs root (network and mount namespaces, chroots)"
    for tool in ("ansible-playbook", "ansible-galaxy", "ssh", "ssh-keygen", "virsh", "ip",
                 "nsenter", "unshare"):
        if shutil.which(tool, path=PATH) is None:
            return f"{tool} not installed (make deps)"
    for suite in set(SUITES):
        if not (REPO / ".cache" / f"fleet-{suite}/usr/sbin/sshd").exists():
            return f".cache/fleet-{suite} missing: run make fleet-images (make check does)"
    if not _deb().exists():
        return f"{_deb()} missing: run make package (make check does)"
    return None


class Ansible:
    """ansible and ansible-playbook in the controller namespace, on the fleet's inventory."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        s = fleet.scratch
        (s / "home").mkdir()
        (s / "ansible.cfg").write_text("[defaults]\nforks = 5\n")
        self.inventory = s / "inventory.ini"
        self.inventory.write_text(fleet.inventory())
        self.env = {
            "HOME": str(s / "home"), "ANSIBLE_CONFIG": str(s / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(s / "collections"),
            "ANSIBLE_LOCAL_TEMP": str(s / "ansible-tmp"), "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
        }
        # the collection as an admin gets it: built, then installed from the tarball
        self._galaxy("build", "--output-path", str(s), str(REPO / "ansible"))
        tarball, = s.glob("virtdeb-libvirt_host-*.tar.gz")
        self._galaxy("install", "--offline", "-p", str(s / "collections"), str(tarball))
        self.seconds: list[tuple[str, float]] = []

    def _galaxy(self, *args: str) -> None:
        res = subprocess.run(["ansible-galaxy", "collection", *args], capture_output=True,
                             env={"PATH": PATH, **self.env}, text=True, check=False,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"ansible-galaxy collection {args}: {res.stdout}{res.stderr}"

    def playbook(self, name: str, *args: str, extra: dict[str, Any] | None = None,
                 ok_rc: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        argv = ["ansible-playbook", "-i", str(self.inventory),
                str(REPO / "ansible/playbooks" / name), *args]
        if extra:
            argv += ["-e", json.dumps(extra)]
        t0 = time.monotonic()
        res = self.fleet.ctl(argv, env=self.env, check=False, timeout=600)
        self.seconds.append((f"{name} {' '.join(args)}".strip(), time.monotonic() - t0))
        assert res.returncode in ok_rc, f"{argv}: exit {res.returncode}\n{res.stdout[-8000:]}" \
            f"\n{res.stderr[-3000:]}"
        return res

    def adhoc(self, *args: str) -> dict[str, dict[str, Any]]:
        res = self.fleet.ctl(["ansible", "-i", str(self.inventory), "libvirt_hosts", *args],
                             env=self.env, check=True, timeout=300)
        out: dict[str, dict[str, Any]] = {}
        for m in re.finditer(r"^(h\d+) \| (\w+) => (\{.*?^\})", res.stdout, re.M | re.S):
            out[m.group(1)] = {"status": m.group(2), **json.loads(m.group(3))}
        return out


def recap(res: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    return {m.group(1): {"ok": int(m.group(2)), "changed": int(m.group(3)),
                         "unreachable": int(m.group(4)), "failed": int(m.group(5))}
            for m in RECAP.finditer(res.stdout)}


def _say(line: str) -> None:
    print(f"fleet: {line}")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    reason = _skip_reason()
    if reason:
        if os.environ.get("VIRTDEB_FLEET_REQUIRED") == "1":  # make fleet (make check)
            pytest.fail(reason)
        pytest.skip(reason)
    f = Fleet(SUITES, REPO / ".cache", CPUS)
    f.start()
    try:
        for h in f.hosts:
            _say(f"{h.name} {h.suite} {h.addr} CPU {h.cpu}: sshd and libvirtd up")
        _say(f"started in {f.timings['start']:.1f} s")
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def ansible(fleet: Fleet) -> Ansible:
    return Ansible(fleet)


ROLE_VARS: dict[str, Any] = {
    "virtdeb_allow_edit": ["bridge.conf"], "virtdeb_bridge_allow": ["br0"],
    "virtdeb_rules": RULES,
}


@pytest.fixture(scope="module")
def installed(fleet: Fleet, ansible: Ansible) -> tuple[dict[str, Any], dict[str, Any]]:
    """The role run twice on the new fleet (virtdeb installed from the .deb): the recaps."""
    extra = {"virtdeb_deb": str(_deb()), **ROLE_VARS}
    first = recap(ansible.playbook("site.yml", extra=extra))
    second = recap(ansible.playbook("site.yml", extra=extra))
    return first, second


def converge(ansible: Ansible, **variables: Any) -> None:
    """The role with ROLE_VARS (and VARIABLES): what the previous test changed is undone."""
    r = recap(ansible.playbook("site.yml", extra={**ROLE_VARS, **variables}))
    assert all(v["failed"] == 0 for v in r.values()), r


def test_role_twice_second_run_changes_nothing(fleet: Fleet, installed: Any) -> None:
    first, second = installed
    _say(f"site.yml first run: {_counts(first)}")
    _say(f"site.yml second run: {_counts(second)}")
    assert set(first) == set(second) == {h.name for h in fleet.hosts}
    for name in first:
        assert first[name]["failed"] == 0 and first[name]["changed"] > 0, first
        assert second[name] == {**second[name], "changed": 0, "failed": 0}, second
    version = _deb().name.split("_")[1]
    for h in fleet.hosts:
        assert h.run(["dpkg-query", "-W", "-f", "${Version}", "virtdeb"]).stdout == version
        assert "allow br0" in h.path("/etc/qemu/bridge.conf").read_text().splitlines()


def _counts(r: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{h} changed={v['changed']} failed={v['failed']}"
                     for h, v in sorted(r.items()))


def test_check_diff_shows_virtdeb_diff_and_changes_nothing(fleet: Fleet, ansible: Ansible,
                                                           installed: Any) -> None:
    converge(ansible)
    h2 = fleet.hosts[1]
    conf = h2.path("/etc/qemu/bridge.conf")
    conf.write_text("# drift: someone removed the allow line by hand\n")
    res = ansible.playbook("site.yml", "--check", "--diff", extra=ROLE_VARS)
    r = recap(res)
    _say(f"--check --diff after drift on h2: {_counts(r)}")
    assert r["h2"]["changed"] == 1 and r["h1"]["changed"] == r["h3"]["changed"] == 0, r
    assert "+allow br0" in res.stdout  # virtdeb's own unified diff
    assert "b/etc/qemu/bridge.conf" in res.stdout
    assert conf.read_text() == "# drift: someone removed the allow line by hand\n"
    r = recap(ansible.playbook("site.yml", extra=ROLE_VARS))
    _say(f"run after drift: {_counts(r)}")
    assert r["h2"]["changed"] == 1 and r["h1"]["changed"] == r["h3"]["changed"] == 0, r
    assert "allow br0" in conf.read_text().splitlines()


def test_debconf_answer_change_reconfigures(fleet: Fleet, ansible: Ansible,
                                            installed: Any) -> None:
    converge(ansible)
    extra = {**ROLE_VARS, "virtdeb_bridge_allow": ["br0", "br1"]}
    res = ansible.playbook("site.yml", extra=extra)
    handler = res.stdout.split("RUNNING HANDLER [virtdeb.libvirt_host.virtdeb : Reconfigure"
                               " virtdeb]", 1)
    assert len(handler) == 2, res.stdout
    assert re.search(r"^changed: \[h1\]", handler[1].split("TASK [")[0], re.M), handler[1]
    again = recap(ansible.playbook("site.yml", extra=extra))
    _say(f"bridge_allow br0 br1: dpkg-reconfigure ran; next run: {_counts(again)}")
    assert all(v["changed"] == 0 for v in again.values()), again
    for h in fleet.hosts:
        assert re.search(r"^allow\s*=\s*br0 br1\s*$",
                         h.path("/etc/virtdeb/virtdeb.conf").read_text(), re.M)
        lines = h.path("/etc/qemu/bridge.conf").read_text().splitlines()
        assert "allow br0" in lines and "allow br1" in lines, lines
        shown = h.run(["debconf-show", "virtdeb"]).stdout
        assert "bridge_allow: br0 br1" in shown, shown


def test_install_from_an_apt_repository(fleet: Fleet, ansible: Ansible,
                                        installed: Any) -> None:
    """h3 purged and its apt sources gone; the role installs from a file: repository."""
    h3 = fleet.hosts[2]
    built = fleet.scratch / "repo"  # (dpkg-scanpackages finds nothing under /proc/PID/root)
    built.mkdir()
    shutil.copy(_deb(), built)
    packages = subprocess.run(["dpkg-scanpackages", ".", "/dev/null"], cwd=built,
                              capture_output=True, text=True, check=True).stdout
    assert "Package: virtdeb" in packages, packages
    (built / "Packages").write_text(packages)
    shutil.copytree(built, h3.path("/srv/virtdeb-repo"))
    h3.run("dpkg --purge virtdeb && rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*")
    extra = {**ROLE_VARS, "virtdeb_bridge_allow": ["br0", "br1"],
             "virtdeb_apt_repository": "deb [trusted=yes] file:/srv/virtdeb-repo ./"}
    first = recap(ansible.playbook("site.yml", "--limit", "h3", extra=extra))
    again = recap(ansible.playbook("site.yml", "--limit", "h3", extra=extra))
    _say(f"h3 purged, from an apt repository: {_counts(first)}; again: {_counts(again)}")
    assert first["h3"]["changed"] > 0 and first["h3"]["failed"] == 0, first
    assert again["h3"]["changed"] == 0 and again["h3"]["failed"] == 0, again
    assert h3.run(["dpkg-query", "-W", "-f", "${Status}", "virtdeb"]).stdout == \
        "install ok installed"
    assert "file:/srv/virtdeb-repo" in h3.path("/etc/apt/sources.list.d/virtdeb.list").read_text()
    assert re.search(r"^allow\s*=\s*br0 br1\s*$",
                     h3.path("/etc/virtdeb/virtdeb.conf").read_text(), re.M)


def test_facts_read_back(fleet: Fleet, ansible: Ansible, installed: Any) -> None:
    converge(ansible)
    facts = ansible.adhoc("-m", "ansible.builtin.setup", "-a", "filter=ansible_local")
    version = _deb().name.split("_")[1]
    for h in fleet.hosts:
        fact = facts[h.name]["ansible_facts"]["ansible_local"]["virtdeb"]
        assert fact["version"] == version
        rules = {f["rule"] for f in fact["findings"]}
        assert set(RULES) <= rules, rules
        assert sum(fact["counts"].values()) == len(fact["findings"])
        _say(f"{h.name} ansible_local.virtdeb: virtdeb {fact['version']}, "
             + " ".join(f"{k}={v}" for k, v in sorted(fact["counts"].items())))


def test_qemu_ssh_through_virt_ssh_helper_and_nc(fleet: Fleet) -> None:
    """README.Debian's SSH section for real: both remote sides libvirt can use."""
    for h in fleet.hosts:
        for proxy, remote in (("native", "virt-ssh-helper"), ("netcat", "nc")):
            before = fleet.ssh_log.read_text() if fleet.ssh_log.exists() else ""
            res = fleet.ctl(["virsh", "-c", fleet.uri(h, proxy), "version", "--daemon"])
            calls = fleet.ssh_log.read_text()[len(before):]
            assert re.search(rf"\b{re.escape(remote)}\b", calls), calls
            assert proxy != "netcat" or "libvirt-sock" in calls, calls
            daemon = re.search(r"Running against daemon: (\S+)", res.stdout)
            assert daemon, res.stdout
            _say(f"{h.name} qemu+ssh:// proxy={proxy}: remote {remote}, libvirtd"
                 f" {daemon.group(1)} answers")


# ---------------------------------------------------------------- the fleet's CPU
def _domain_xml(name: str, cpu_xml: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os>"
            f"{cpu_xml}</domain>")


def _virsh(fleet: Fleet, index: int, *args: str, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    return fleet.ctl(["virsh", "-c", fleet.uri(fleet.hosts[index]), *args], check=check)


def _compare(fleet: Fleet, index: int, cpu_xml: str) -> subprocess.CompletedProcess[str]:
    f = fleet.scratch / "cpu.xml"
    f.write_text(cpu_xml)
    return _virsh(fleet, index, "hypervisor-cpu-compare", "--error", str(f), check=False)


def _cpu(model: str, features: list[str]) -> str:
    return (f"<cpu mode='custom' match='exact'><model fallback='forbid'>{model}</model>"
            + "".join(f"<feature policy='require' name='{n}'/>" for n in features)
            + "</cpu>")


def _baseline_report(res: subprocess.CompletedProcess[str]) -> list[str]:
    m = re.search(r'"msg": \[(.*?)\n    \]', res.stdout, re.S)
    assert m, res.stdout
    return [json.loads(line.strip().rstrip(",")) for line in m.group(1).splitlines()
            if line.strip()]


@pytest.fixture
def guests(fleet: Fleet) -> Iterator[list[tuple[int, str]]]:
    """(host index, name) of the guests a test defines: undefined after it."""
    made: list[tuple[int, str]] = []
    yield made
    for index, name in made:
        _virsh(fleet, index, "undefine", name, check=False)


def _define(fleet: Fleet, guests: list[tuple[int, str]], index: int, name: str,
            cpu_xml: str) -> None:
    dom = fleet.scratch / f"{name}.xml"
    dom.write_text(_domain_xml(name, cpu_xml))
    _virsh(fleet, index, "define", str(dom))
    guests.append((index, name))


def test_baseline_every_host_accepts_and_cannot_move(fleet: Fleet, ansible: Ansible,
                                                     installed: Any,
                                                     guests: list[tuple[int, str]]) -> None:
    res = ansible.playbook("fleet_baseline.yml", ok_rc=(0, 2))
    lines = _baseline_report(res)
    for line in lines:
        _say(f"fleet_baseline.yml: {line}")
    # the baseline as the controller asks for it too, over qemu+ssh:// to every host
    uris = [fleet.uri(h) for h in fleet.hosts]
    out = fleet.ctl(["/usr/bin/python3", "-m", "virtdeb", "cpu-baseline", "--json", *uris],
                    env={"PYTHONPATH": str(REPO)}, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert [h["uri"] for h in result["hosts"]] == uris
    assert all(h["ok"] for h in result["hosts"]), result["hosts"]
    base = result["baseline"]
    assert base["cpu_xml"] and sorted(base["accepted_by"]) == sorted(uris), base
    _say(f"controller: virtdeb cpu-baseline --json over {len(uris)} qemu+ssh:// hosts:"
         f" {base['model']} with {len(base['features'])} features, accepted by"
         f" {len(base['accepted_by'])} of {len(uris)} ({result['seconds']:.2f} s)")
    # a guest with the baseline CPU on h1: every host's own compareHypervisorCPU accepts it
    _define(fleet, guests, 0, "fleet-base", base["cpu_xml"])
    for i, h in enumerate(fleet.hosts):
        cmp = _compare(fleet, i, base["cpu_xml"])
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        _say(f"baseline CPU on {h.name}: {cmp.stdout.strip()}")
    # README.Debian's guest on h1: h2, after its microcode update, cannot give it
    missing = SEED_MISSING
    _define(fleet, guests, 0, "fleet-nomove", _cpu(SEED_MODEL, []).replace(
        "</model>", "</model><vendor>Intel</vendor>"))
    res = ansible.playbook("fleet_baseline.yml", ok_rc=(0, 2))
    lines = _baseline_report(res)
    for line in lines:
        _say(f"fleet_baseline.yml: {line}")
    want = f"fleet-nomove on h1 cannot move to h2, missing {', '.join(missing)}"
    assert want in lines, lines
    assert not [x for x in lines if "fleet-base" in x and "cannot move" in x], lines
    assert not [x for x in lines if "fleet-nomove" in x and "to h3" in x], lines


def test_fail_on_fail_only_when_asked(fleet: Fleet, ansible: Ansible, installed: Any,
                                     guests: list[tuple[int, str]]) -> None:
    converge(ansible)
    # a guest on h2 whose CPU h2 cannot give: doctor's cpu rule FAILs there
    _define(fleet, guests, 1, "fleet-broken", _cpu("kvm64", SEED_MISSING))
    res = ansible.playbook("report.yml")
    r = recap(res)
    assert all(v["failed"] == 0 for v in r.values()), r
    assert re.search(r"FAIL=1 .*FAIL cpu: ", res.stdout), res.stdout
    res = ansible.playbook("report.yml", extra={"virtdeb_fail_on_fail": True}, ok_rc=(2,))
    r = recap(res)
    _say(f"report.yml virtdeb_fail_on_fail=true: {_counts(r)}")
    assert r["h2"]["failed"] == 1 and r["h1"]["failed"] == r["h3"]["failed"] == 0, r
    # the role itself, asked to
    extra = {**ROLE_VARS, "virtdeb_bridge_allow": ["br0", "br1"], "virtdeb_fail_on_fail": True}
    res = ansible.playbook("site.yml", extra=extra, ok_rc=(2,))
    r = recap(res)
    _say(f"site.yml virtdeb_fail_on_fail=true: {_counts(r)}")
    assert r["h2"]["failed"] == 1 and r["h1"]["failed"] == r["h3"]["failed"] == 0, r
    assert re.search(r"fatal: \[h2\]: FAILED!.*virtdeb doctor: cpu: ", res.stdout), res.stdout


def test_zz_everything_removed(fleet: Fleet, ansible: Ansible) -> None:
    for what, seconds in ansible.seconds:
        _say(f"{seconds:5.1f} s  ansible-playbook {what}")
    t0 = time.monotonic()
    fleet.stop()
    _say(f"stopped in {time.monotonic() - t0:.1f} s; left behind: {fleet.leftovers() or 'nothing'}")
    assert fleet.leftovers() == []
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True, check=True).stdout.split()
                if n.startswith(fleet.tag)]
