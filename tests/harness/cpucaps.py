"""A chosen CPU for a private libvirtd: its qemu capabilities cache, edited.

libvirt learns the host CPU that KVM gives a guest by probing qemu once
(``query-cpu-model-expansion``) and keeps the answer in its qemu capabilities cache
(``var/cache/libvirt/qemu/capabilities/HASH.xml``): a ``<hostCPU type='kvm'>`` element of
qemu properties (``vendor``, ``family``, ``model``, ``stepping``, ``model-id`` and one
boolean per feature), and one ``<cpu type='kvm' name=MODEL usable=...>`` element per CPU
model with the features that block it. Everything libvirt says about the host CPU for
KVM comes from there: the host-model of ``getDomainCapabilities``, the usable models,
``compareHypervisorCPU``, ``baselineHypervisorCPU``.  ``edit_caps`` rewrites those
elements so that the daemon that reads the cache sees a chosen CPU, whatever this
machine's CPU is:

- ``intel-haswell``: an Intel Haswell (signature 6/60/3) after the microcode update of
  README.Debian: every feature of libvirt's ``Haswell`` model but ``hle`` and ``rtm``,
  and a few every Haswell has beside the model (``vme``, ``monitor``, ...);
- ``amd-epyc``: an AMD EPYC (23/1/2) that lost ``sha-ni`` (an update that took a
  feature away, on the other vendor);
- ``intel-haswell-tsx``: the same Haswell before the update (the fleet test's hosts that
  were not updated yet).

A profile's features are read from the cpu_map of the libvirt that runs (``ROOT/usr/
share/libvirt/cpu_map/x86_MODEL.xml``), so each suite's libvirt gets its own model. The
usable models and their blockers are computed from the same cpu_map: a model is usable
when all its features are in the profile.  Nothing else of the cache changes, so libvirt
still takes it as valid for this host (same qemu, kernel, microcode, CPU signature);
``check_profile`` verifies on the running daemon that it did (it did not probe qemu again).

``PROFILES`` names the profiles; the variable ``VIRTDEB_TEST_CPU`` (``make check-cpu
CPU=...``) narrows the CPU tests to one of them, or ``host`` for this machine's own CPU.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.libvirtd import PrivateLibvirtd

CPU_ENV = "VIRTDEB_TEST_CPU"
HOST = "host"  # this machine's CPU as libvirt reports it, unedited
EXPAND_FEATURES = 1  # VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES


class ProfileError(RuntimeError):
    """A profile cannot be applied to this cache (names what is missing)."""


@dataclass(frozen=True)
class Profile:
    name: str
    vendor: str  # libvirt's name: Intel, AMD
    cpuid_vendor: str  # qemu's vendor property: GenuineIntel, AuthenticAMD
    family: int
    model: int
    stepping: int
    model_id: str
    base: str  # a libvirt cpu_map model: the CPU has its features...
    lost: tuple[str, ...]  # ...but these (libvirt names)...
    extra: tuple[str, ...]  # ...and these, that real CPUs of the kind have beside the model


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("intel-haswell", "Intel", "GenuineIntel", 6, 60, 3,
            "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "Haswell", ("hle", "rtm"),
            ("vme", "ss", "monitor", "f16c", "rdrand", "xsaveopt", "abm", "arat", "pdpe1gb")),
    Profile("amd-epyc", "AMD", "AuthenticAMD", 23, 1, 2,
            "AMD EPYC 7601 32-Core Processor", "EPYC", ("sha-ni",), ("vme",)),
    # the same Haswell before the update, for fleets whose hosts differ by it
    Profile("intel-haswell-tsx", "Intel", "GenuineIntel", 6, 60, 3,
            "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "Haswell", (),
            ("vme", "ss", "monitor", "f16c", "rdrand", "xsaveopt", "abm", "arat", "pdpe1gb")),
)}
ALL = [HOST, "intel-haswell", "amd-epyc"]  # what the CPU tests run on in make check

# libvirt feature names whose qemu property is not the name with '_' as '-'
_QEMU_NAME = {"pclmuldq": "pclmulqdq"}


def selected(default: Iterable[str]) -> list[str]:
    """The CPUs the CPU tests run on: DEFAULT, or just VIRTDEB_TEST_CPU when it is set."""
    chosen = os.environ.get(CPU_ENV, "")
    if not chosen:
        return list(default)
    if chosen != HOST and chosen not in PROFILES:
        raise ProfileError(f"{CPU_ENV}={chosen}: not one of {HOST}, {', '.join(PROFILES)}")
    return [chosen]


def cpu_map_features(model: str, root: Path = Path("/")) -> set[str]:
    """The features of libvirt's cpu_map model MODEL (libvirt names)."""
    path = root / "usr/share/libvirt/cpu_map" / f"x86_{model}.xml"
    found = ET.parse(path).getroot().find("model")
    if found is None:
        raise ProfileError(f"{path}: no <model>")
    return {f.get("name", "") for f in found.findall("feature")}


def profile_features(profile: Profile, root: Path = Path("/")) -> set[str]:
    """The CPU of PROFILE in libvirt's feature names, read from ROOT's cpu_map."""
    have = cpu_map_features(profile.base, root)
    missing = set(profile.lost) - have
    if missing:
        raise ProfileError(f"libvirt's {profile.base} has no {sorted(missing)}")
    return (have | set(profile.extra)) - set(profile.lost)


def _qemu_names(features: set[str], props: set[str]) -> dict[str, str]:
    """libvirt name -> qemu property, for each of FEATURES that this qemu has a property
    for. The others (newer libvirts list ``vmx-*`` details in their models that qemu has
    no property for) cannot be reported by qemu at all, so no host has them either."""
    out: dict[str, str] = {}
    for name in sorted(features):
        for cand in (_QEMU_NAME.get(name), name, name.replace("_", "-")):
            if cand and cand in props:
                out[name] = cand
                break
    return out


def _set_prop(host_cpu: ET.Element, name: str, value: str) -> None:
    prop = host_cpu.find(f"property[@name='{name}']")
    if prop is None:
        raise ProfileError(f"the cached host CPU has no property {name!r}")
    prop.set("value", value)


def edit_cache_file(text: str, profile: Profile, root: Path = Path("/")) -> str:
    """One qemu capabilities cache file (its XML) with PROFILE's CPU for KVM."""
    caps = ET.fromstring(text)
    host_cpu = caps.find("hostCPU[@type='kvm']")
    if host_cpu is None:
        raise ProfileError("the cache has no <hostCPU type='kvm'> (qemu probed without KVM)")
    booleans = {p.get("name", ""): p for p in host_cpu.findall("property")
                if p.get("type") == "boolean"}
    features = profile_features(profile, root)
    named = _qemu_names(features, set(booleans))
    if len(named) < len(features) // 2:  # a cache of another format: say so
        raise ProfileError(f"this qemu has properties for too few of {profile.base}'s"
                           f" features ({len(named)} of {len(features)})")
    wanted = set(named.values())
    for name, prop in booleans.items():
        if name in wanted:
            prop.set("value", "true")
            prop.set("migratable", "yes")
        else:
            prop.set("value", "false")
            prop.attrib.pop("migratable", None)
    _set_prop(host_cpu, "vendor", profile.cpuid_vendor)
    _set_prop(host_cpu, "model-id", profile.model_id)
    for key in ("family", "model", "stepping"):
        _set_prop(host_cpu, key, str(getattr(profile, key)))
    cpu_map = root / "usr/share/libvirt/cpu_map"
    for model in caps.findall("cpu[@type='kvm']"):
        name = model.get("name", "")
        if not (cpu_map / f"x86_{name}.xml").exists():
            continue  # qemu's aliases and versions: libvirt lists only its own models
        needs = _qemu_names(cpu_map_features(name, root), set(booleans))
        blockers = sorted(q for q in needs.values() if q not in wanted)
        for old in model.findall("blocker"):
            model.remove(old)
        for q in blockers:
            ET.SubElement(model, "blocker", name=q)
        model.set("usable", "no" if blockers else "yes")
    return ET.tostring(caps, encoding="unicode")


def edit_caps(src: Path, dst: Path, profile: Profile, root: Path = Path("/")) -> Path:
    """Copy the cache directory SRC to DST with every file edited to PROFILE; returns DST."""
    files = sorted(src.glob("*.xml"))
    if not files:
        raise ProfileError(f"{src}: no qemu capabilities cache (no daemon probed qemu yet)")
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in files:
        target = dst / f.name
        target.write_text(edit_cache_file(f.read_text(), profile, root))
        os.chmod(target, 0o600)
    return dst


def host_model(conn: Any) -> ET.Element:
    """The host-model CPU of a connection's domain capabilities (KVM)."""
    caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0))
    mode = caps.find("cpu/mode[@name='host-model']")
    if mode is None:
        raise ProfileError("no host-model in the domain capabilities")
    return mode


def check_profile(conn: Any, profile: Profile) -> None:
    """Raise unless the daemon behind CONN reports PROFILE's CPU (it read the edited
    cache rather than probing qemu again)."""
    vendor = host_model(conn).findtext("vendor")
    if vendor != profile.vendor:
        raise ProfileError(f"the daemon reports vendor {vendor}, not {profile.vendor}:"
                           " libvirt probed qemu again instead of reading the edited cache")


# ------------------------------------------------------------ what libvirt reports
def host_model_cpu(conn: Any, required: Iterable[str] = ()) -> str:
    """The host-model CPU written out as a custom CPU (what virt-install does), each of
    REQUIRED added as a required feature (replacing the host-model's own line for it:
    libvirt refuses a feature twice)."""
    mode = host_model(conn)
    extra = list(required)
    parts = [f"<model fallback='forbid'>{mode.findtext('model')}</model>"]
    if mode.findtext("vendor"):
        parts.append(f"<vendor>{mode.findtext('vendor')}</vendor>")
    parts += [ET.tostring(f, encoding="unicode") for f in mode.findall("feature")
              if f.get("name") not in extra]
    parts += [f"<feature policy='require' name='{n}'/>" for n in extra]
    return f"<cpu mode='custom' match='exact'>{''.join(parts)}</cpu>"


def expanded_features(conn: Any) -> set[str]:
    """Every feature of the host CPU for KVM, not only the host-model's difference from
    its named model (baselineHypervisorCPU with VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)."""
    out = conn.baselineHypervisorCPU(None, "x86_64", None, "kvm", [host_model_cpu(conn)],
                                     EXPAND_FEATURES)
    return {f.get("name", "") for f in ET.fromstring(out).findall("feature")
            if f.get("policy") == "require"}


def known_features(root: Path = Path("/")) -> set[str]:
    """The features of every x86 CPU model of ROOT's libvirt (cpu_map): features that
    libvirt can compare, whichever CPU this is."""
    out: set[str] = set()
    for path in (root / "usr/share/libvirt/cpu_map").glob("x86_*.xml"):
        model = ET.parse(path).getroot().find("model")
        if model is not None:
            out |= {f.get("name", "") for f in model.findall("feature")}
    return out


def usable_models(conn: Any) -> list[str]:
    """The custom CPU models this host can run, as libvirt reports them (sorted)."""
    caps = ET.fromstring(conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0))
    return sorted(m.text or "" for m in caps.findall("cpu/mode[@name='custom']/model")
                  if m.get("usable") == "yes")


def lacking(conn: Any, count: int = 2, root: Path = Path("/")) -> list[str]:
    """COUNT features libvirt knows and this host's CPU lacks: README.Debian's hle and rtm
    where the host lacks both, else the first ones by name (sorted)."""
    missing = sorted(known_features(root) - expanded_features(conn))
    if {"hle", "rtm"} <= set(missing) and count == 2:
        return ["hle", "rtm"]
    if len(missing) < count:
        raise ProfileError(f"this host's CPU lacks fewer than {count} known features")
    return missing[:count]


# ------------------------------------------------------------ daemons with a chosen CPU
@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run what starts a daemon on one core: libvirt keeps the host's CPUID in its qemu
    capabilities cache and probes qemu again when it differs, and on some VMs of this
    kind a CPUID leaf (0x1f) differs per core. Children inherit the mask; ours is
    restored."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


def probe_caps(into: Path, daemon: PrivateLibvirtd | None = None) -> Path:
    """A copy of the qemu capabilities cache of DAEMON (not started yet; by default one of
    this host's) started on one core: qemu probed once, or the cache kept for its image
    reused when libvirt finds it valid."""
    daemon = daemon or PrivateLibvirtd()
    with one_core():
        daemon.start()
    try:
        shutil.copytree(daemon.caps_dir, into)
    finally:
        daemon.stop()
    return into


def start_daemon(cpu: str, probed: Path | None, workdir: Path) -> PrivateLibvirtd:
    """A running private libvirtd whose KVM host CPU is CPU: ``host`` (this machine's), or
    a profile (the PROBED cache edited into WORKDIR, checked on the daemon)."""
    if cpu == HOST:
        with one_core():
            return PrivateLibvirtd().start()
    if probed is None:
        raise ProfileError(f"{cpu}: no probed qemu capabilities to edit")
    profile = PROFILES[cpu]
    caps = edit_caps(probed, workdir / f"caps-{cpu}", profile)
    with one_core():
        daemon = PrivateLibvirtd(caps_cache=str(caps)).start()
    try:
        conn = daemon.connect()
        try:
            check_profile(conn, profile)
        finally:
            conn.close()
    except BaseException:
        daemon.stop(raise_problems=False)
        raise
    return daemon


@contextlib.contextmanager
def cpu_daemon(cpu: str, probed: Path, workdir: Path) -> Iterator[PrivateLibvirtd]:
    """start_daemon() as a context: the daemon is stopped after, whatever happened."""
    daemon = start_daemon(cpu, probed, workdir)
    try:
        yield daemon
    finally:
        daemon.stop()
