"""README.Debian's CPU story on both vendors, on any machine: real private libvirtds whose
KVM host CPU is given by edited qemu capabilities (tests/harness/cpucaps.py).

- Intel: the seed's own guest, ``<model fallback='forbid'>Haswell</model>`` with
  ``<vendor>Intel</vendor>``, on a Haswell whose microcode update took ``hle`` and ``rtm``
  away: cpu-check names them in libvirt's own words, the fix makes libvirt accept the
  guest, revert restores it byte for byte.
- AMD: the same for ``EPYC`` on an EPYC that lost ``sha-ni``.
- A fleet of one host of each vendor: cpu-baseline says that guests cannot move between
  the vendors and why, and gives a baseline both hosts accept.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import cpucaps
from tests.harness.libvirtd import PrivateLibvirtd, reset_libvirt
from tests.harness.procs import PATH

libvirt = pytest.importorskip("libvirt")

TOP = Path(__file__).resolve().parents[1]
FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
EMULATOR = "/usr/bin/qemu-system-x86_64"
PROFILES = [p for p in cpucaps.selected(cpucaps.ALL) if p != cpucaps.HOST]


def guest_cpu(profile: cpucaps.Profile) -> str:
    """The guest CPU README.Debian warns about: the profile's model, hard-coded."""
    return (f"<cpu mode='custom' match='exact'><model fallback='forbid'>{profile.base}</model>"
            f"<vendor>{profile.vendor}</vendor></cpu>")


def domain_xml(name: str, cpu: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}</domain>")


class Daemons:
    """One private libvirtd per CPU profile, started when first asked for, kept for the
    module, stopped at its end."""

    def __init__(self, probed: Path, workdir: Path) -> None:
        self.probed = probed
        self.workdir = workdir
        self.running: dict[str, PrivateLibvirtd] = {}

    def __getitem__(self, cpu: str) -> PrivateLibvirtd:
        if cpu not in self.running:
            self.running[cpu] = cpucaps.start_daemon(cpu, self.probed, self.workdir)
        return self.running[cpu]

    def stop(self) -> None:
        for daemon in self.running.values():
            daemon.stop()


@pytest.fixture(scope="module")
def daemons(probed_caps: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemons]:
    d = Daemons(probed_caps, tmp_path_factory.mktemp("vendors"))
    try:
        yield d
    finally:
        d.stop()


@contextlib.contextmanager
def connection(daemon: PrivateLibvirtd) -> Iterator[Any]:
    conn = daemon.connect()
    try:
        yield conn
    finally:
        reset_libvirt(conn)
        conn.close()


def virtdeb(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-m", "virtdeb", *args, "--root", str(root)],
                          cwd=TOP, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": PATH, "LC_ALL": "C.UTF-8", "PYTHONPATH": str(TOP)})


def compare(conn: Any, cpu_xml: str) -> int:
    return int(conn.compareHypervisorCPU(EMULATOR, "x86_64", None, "kvm", cpu_xml,
                                         libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE))


@pytest.mark.parametrize("cpu", PROFILES)
def test_the_guest_a_microcode_update_broke(cpu: str, daemons: Daemons, tmp_path: Path) -> None:
    profile = cpucaps.PROFILES[cpu]
    other = next(p for p in cpucaps.PROFILES.values() if p.vendor != profile.vendor)
    daemon = daemons[cpu]
    with connection(daemon) as conn:
        web = conn.defineXML(domain_xml("web", guest_cpu(profile)))
        conn.defineXML(domain_xml("elsewhere", guest_cpu(other)))
        lost = ", ".join(sorted(profile.lost))
        # libvirt's own verdict, word for word as README.Debian quotes it
        with pytest.raises(libvirt.libvirtError,
                           match=f"Host CPU does not provide required features: {lost}$"):
            compare(conn, guest_cpu(profile))
        before = web.XMLDesc(FLAGS)

        proc = virtdeb(tmp_path, "cpu-check", "--connect", daemon.uri, "--json")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        got = {d["domain"]: d for d in json.loads(proc.stdout)["domains"]}
        assert sorted(got["web"]["missing_features"]) == sorted(profile.lost)
        assert f"Host CPU does not provide required features: {lost}" in got["web"]["message"]
        assert got["web"]["vendor_mismatch"] is False
        assert got["elsewhere"]["vendor_mismatch"] is True
        assert "host CPU vendor does not match" in got["elsewhere"]["message"]
        text = virtdeb(tmp_path, "cpu-check", "--connect", daemon.uri, "--domain", "web").stdout
        assert f"INCOMPATIBLE: missing features: {lost}" in text, text

        proc = virtdeb(tmp_path, "cpu-check", "--connect", daemon.uri, "--domain", "web",
                       "--fix", "disable-missing")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        fixed = ET.fromstring(web.XMLDesc(FLAGS)).find("cpu")
        assert fixed is not None and fixed.findtext("model") == profile.base
        assert {f.get("name"): f.get("policy") for f in fixed.findall("feature")} == {
            name: "disable" for name in profile.lost}
        assert compare(conn, ET.tostring(fixed, encoding="unicode")) >= 1  # libvirt agrees

        proc = virtdeb(tmp_path, "revert", "--connect", daemon.uri)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert web.XMLDesc(FLAGS) == before


def test_a_fleet_of_two_vendors(daemons: Daemons, tmp_path: Path) -> None:
    if len(PROFILES) < 2:
        pytest.skip(f"{cpucaps.CPU_ENV} narrows the run to one CPU")
    intel, amd = daemons["intel-haswell"], daemons["amd-epyc"]
    with connection(intel) as conn:
        conn.defineXML(domain_xml("web", guest_cpu(cpucaps.PROFILES["intel-haswell"])))
        proc = virtdeb(tmp_path, "cpu-baseline", intel.uri, amd.uri)
        print(proc.stdout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "hosts of different CPU vendors (AMD: B, Intel: A)" in proc.stdout
        assert "web@A -> B: host CPU vendor does not match (requires Intel)" in proc.stdout
        result = json.loads(virtdeb(tmp_path, "cpu-baseline", "--json", intel.uri,
                                    amd.uri).stdout)
        base = result["baseline"]
        assert sorted(base["accepted_by"]) == sorted([intel.uri, amd.uri])
        assert ET.fromstring(base["cpu_xml"]).find("vendor") is None
        for daemon in (intel, amd):  # each host's own libvirt accepts the baseline
            other = daemon.connect()
            try:
                assert compare(other, base["cpu_xml"]) >= 1
            finally:
                other.close()
