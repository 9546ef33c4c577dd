"""The APT hook on streams (protocol v3): warns when it should, silent otherwise, never raises."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtdeb import apthook

CONFIG = "APT::Architecture=amd64\nDPkg::Tools::Options::/usr/lib/virtdeb/apt-hook::Version=3\n"
MICROCODE_UP = ("intel-microcode 3.20230808.1~deb12u1 amd64 same < 3.20240514.1~deb12u1 amd64"
                " same /var/cache/apt/archives/intel-microcode_3.20240514.1~deb12u1_amd64.deb\n"
                "intel-microcode 3.20230808.1~deb12u1 amd64 same < 3.20240514.1~deb12u1 amd64"
                " same **CONFIGURE**\n")
UNRELATED = ("curl 7.88.1-10 amd64 same < 7.88.1-10+deb12u5 amd64 same"
             " /var/cache/apt/archives/curl_7.88.1-10+deb12u5_amd64.deb\n"
             "curl 7.88.1-10 amd64 same < 7.88.1-10+deb12u5 amd64 same **CONFIGURE**\n")
REMOVE_DNSMASQ = "dnsmasq-base 2.89-1 amd64 same > - - none **REMOVE**\n"

FRAGILE = """<domain type='kvm'>
  <name>{name}</name>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>Haswell</model>
    <feature policy='require' name='hle'/>
  </cpu>
</domain>
"""
LOOSE = """<domain type='kvm'>
  <name>loose</name>
  <cpu mode='custom' match='minimum'><model fallback='allow'>pentium3</model></cpu>
</domain>
"""


def stream(*actions: str, version: str = "VERSION 3\n") -> bytes:
    return (version + CONFIG + "\n" + "".join(actions)).encode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    qemu = tmp_path / "etc/libvirt/qemu"
    qemu.mkdir(parents=True)
    (qemu / "web.xml").write_text(FRAGILE.format(name="web"))
    (qemu / "loose.xml").write_text(LOOSE)
    (qemu / "broken.xml").write_text("<domain><name>x</nam")
    return tmp_path


def run_hook(data: bytes, root: Path, **env: str) -> tuple[int, str]:
    """Feed DATA on a pipe named by APT_HOOK_INFO_FD, as apt does (a writer thread)."""
    r, w = os.pipe()
    out = io.StringIO()

    def write() -> None:
        with os.fdopen(w, "wb") as fh:
            fh.write(data)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        code = apthook.main([], environ={"APT_HOOK_INFO_FD": str(r), **env}, root=str(root),
                            out=out)
        writer.join(timeout=30)
        assert not writer.is_alive()  # the hook read everything: the writer finished
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
    return code, out.getvalue()


def test_microcode_upgrade_lists_fragile_domains(root: Path) -> None:
    code, text = run_hook(stream(UNRELATED, MICROCODE_UP), root)
    assert code == 0
    assert "intel-microcode 3.20230808.1~deb12u1 -> 3.20240514.1~deb12u1" in text
    assert "web: Haswell (fallback=forbid, match=exact)" in text
    assert "loose" not in text
    assert "virtdeb cpu-check" in text


def test_clones_of_one_template_are_one_line(root: Path) -> None:
    qemu = root / "etc/libvirt/qemu"
    for i in range(40):
        (qemu / f"web{i:02d}.xml").write_text(FRAGILE.format(name=f"web{i:02d}"))
    (qemu / "db.xml").write_text(FRAGILE.format(name="db").replace("Haswell", "Broadwell"))
    code, text = run_hook(stream(MICROCODE_UP), root)
    assert code == 0
    listed = [line for line in text.splitlines() if line.startswith("virtdeb:   ")]
    assert listed == [
        "virtdeb:   db: Broadwell (fallback=forbid, match=exact)",
        "virtdeb:   web, web00, web01, web02 and 37 more (41 domains): Haswell"
        " (fallback=forbid, match=exact)"], text
    code, text = run_hook(stream(MICROCODE_UP), root, DEBIAN_FRONTEND="noninteractive")
    assert text.count("\n") == 1
    assert ("db (Broadwell; fallback=forbid, match=exact); web, web00, web01, web02 and 37"
            " more (Haswell; fallback=forbid, match=exact)") in text


def test_microcode_noninteractive_is_short_but_says_it(root: Path) -> None:
    code, text = run_hook(stream(MICROCODE_UP), root, DEBIAN_FRONTEND="noninteractive")
    assert code == 0
    assert len(text.splitlines()) == 1 and "web (Haswell" in text


def test_microcode_without_fragile_domains(tmp_path: Path) -> None:
    assert run_hook(stream(MICROCODE_UP), tmp_path) == (
        0, "virtdeb: intel-microcode 3.20230808.1~deb12u1 -> 3.20240514.1~deb12u1: no domain"
           " has a fragile custom CPU model\n")
    assert run_hook(stream(MICROCODE_UP), tmp_path, DEBIAN_FRONTEND="noninteractive") == (0, "")


def test_unrelated_transaction_is_silent(root: Path) -> None:
    assert run_hook(stream(UNRELATED), root) == (0, "")


def test_removal_of_relied_on_package(root: Path) -> None:
    code, text = run_hook(stream(REMOVE_DNSMASQ), root, DEBIAN_FRONTEND="noninteractive")
    assert code == 0
    assert text.startswith("virtdeb: removing dnsmasq-base: libvirt's NAT networks")


def test_suspended_by_environment(root: Path) -> None:
    assert run_hook(stream(MICROCODE_UP, REMOVE_DNSMASQ), root, VIRTDEB_APT_HOOK="0") == (0, "")


def test_block_only_when_configured(root: Path) -> None:
    (root / "etc/virtdeb").mkdir(parents=True)
    (root / "etc/virtdeb/virtdeb.conf").write_text("[apt]\nblock_on_fragile = yes\n")
    code, text = run_hook(stream(MICROCODE_UP), root)
    assert code == 1 and "stopping this apt run" in text
    (root / "etc/virtdeb/virtdeb.conf").write_text("[apt]\nblock_on_fragile = maybe\n")
    assert run_hook(stream(MICROCODE_UP), root)[0] == 0  # a broken config never blocks


@pytest.mark.parametrize("data", [
    stream(MICROCODE_UP, version="VERSION 2\n"),  # wrong version line
    b"",  # nothing at all
    stream(MICROCODE_UP)[:40],  # truncated inside the configuration
    stream(MICROCODE_UP)[:-60],  # truncated inside an action line
    b"\x00\xff\xfe intel-microcode \x80\n\n\x00" * 100,  # binary garbage
    b"VERSION 3\n\n" + b"intel-microcode " * 200000 + b"\n",  # one huge line (3 MB)
    stream("x" * 5_000_000 + " intel-microcode\n"),  # huge line with the name in it
])
def test_bad_streams_never_raise(root: Path, data: bytes) -> None:
    code, text = run_hook(data, root)
    assert code == 0
    assert "Traceback" not in text


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_any_bytes_exit_zero(data: bytes) -> None:
    out = io.StringIO()
    assert apthook.run(b"VERSION 3\n\nintel-microcode " + data, "/nonexistent", False, out) == 0


def test_main_catches_everything() -> None:
    # an unreadable descriptor: main still answers 0
    assert apthook.main([], environ={"APT_HOOK_INFO_FD": "987"}, out=io.StringIO()) == 0


def test_cheap_path_imports_nothing_more(tmp_path: Path) -> None:
    """The no-op path imports no libvirt, augeas, config, virtdeb.cpu, typing."""
    script = ("import sys, os\nimport virtdeb.apthook as h\n"
              "before = set(sys.modules)\n"
              "rc = h.main([])\n"
              "new = sorted(set(sys.modules) - before)\n"
              "print(rc, new)\n"
              "print('typing' in sys.modules, 'libvirt' in sys.modules)\n")
    proc = subprocess.run(["/usr/bin/python3", "-c", script], input=stream(UNRELATED),
                          capture_output=True, cwd=Path(__file__).parent.parent, check=True)
    assert proc.stdout.decode().splitlines() == ["0 []", "False False"]
    assert proc.stderr == b""


@pytest.fixture
def hook_script() -> Iterator[Path]:
    """The source tree's hooks/apt-hook, or the installed one (autopkgtest copies tests/ only)."""
    for path in (Path(__file__).parent.parent / "hooks/apt-hook",
                 Path("/usr/lib/virtdeb/apt-hook")):
        if path.exists():
            yield path
            return
    pytest.fail("no apt-hook: neither hooks/apt-hook of the source tree nor the installed one")


def test_installed_style_hook_script(root: Path, hook_script: Path) -> None:
    """hooks/apt-hook (the packaging's script) runs this module, fd as apt passes it."""
    r, w = os.pipe()
    os.write(w, stream(REMOVE_DNSMASQ))
    os.close(w)
    env = {"APT_HOOK_INFO_FD": str(r), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(hook_script.parent.parent)}
    proc = subprocess.run(["/usr/bin/python3", str(hook_script)], env=env, pass_fds=(r,),
                          capture_output=True, text=True, check=False)
    os.close(r)
    assert proc.returncode == 0
    assert "removing dnsmasq-base" in proc.stderr
