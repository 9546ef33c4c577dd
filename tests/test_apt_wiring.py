"""The apt.conf.d snippet (hooks/99virtdeb) with real apt in a bookworm chroot.

- apt runs the hook with the protocol version 3 stream on fd 20;
- with the hook program deleted (package removed, not purged), apt-get install
  of an unrelated package still succeeds, thanks to "|| true";
- the same snippet without the guard would break apt (the guard is needed).

Needs root and a bookworm chroot directory: $VIRTDEB_IMAGE_DIR, or
.cache/bookworm-minbase made by `make image`.  Skipped otherwise.  The same
wiring is also checked in the installed system by autopkgtest/system.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.procs import PATH

pytestmark = pytest.mark.integration

TOP = Path(__file__).resolve().parent.parent
SNIPPET = TOP / "hooks" / "99virtdeb"
HOOK = "/usr/lib/virtdeb/apt-hook"
CLEAN_ENV = {
    "PATH": PATH,
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
# dash cannot redirect from fd 20 ("Bad fd number"): perl-base (Essential) reads it.
RECORDER = """#!/bin/sh
{ echo "ARGV $*"; echo "FD ${APT_HOOK_INFO_FD:-none}"
  perl -e 'open(my $f, "<&=", $ARGV[0]) or die "fd: $!"; print while <$f>' "${APT_HOOK_INFO_FD:-0}"
} > /tmp/hook.log
"""


def _image() -> Path | None:
    default = str(TOP / ".cache" / "bookworm-minbase")
    for candidate in (os.environ.get("VIRTDEB_IMAGE_DIR"), default):
        if candidate and (Path(candidate) / "usr" / "bin" / "apt-get").exists():
            return Path(candidate)
    return None


@pytest.fixture()
def chroot(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not SNIPPET.exists():
        pytest.skip("needs the source tree (hooks/99virtdeb)")
    image = _image()
    if image is None:
        pytest.skip("no bookworm chroot: run `make image` or set VIRTDEB_IMAGE_DIR")
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", f"{image}/.", str(root)], check=True)
    shutil.copy(SNIPPET, root / "etc/apt/apt.conf.d/99virtdeb")
    hook = root / HOOK.lstrip("/")
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(RECORDER)
    hook.chmod(0o755)
    return root


def _deb(root: Path, name: str) -> str:
    """Build a tiny package inside the chroot; return its path there."""
    src = root / "tmp" / f"src-{name}"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: virtdeb tests <root@localhost>\nDescription: test package\n")
    (src / "usr" / "share" / name).mkdir(parents=True)
    (src / "usr" / "share" / name / "file").write_text("test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(src),
                    str(root / "tmp" / f"{name}.deb")], check=True, env=CLEAN_ENV,
                   stdout=subprocess.DEVNULL)
    return f"/tmp/{name}.deb"


def _apt_install(root: Path, deb: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), "apt-get", "install", "-y", deb],
                          env=CLEAN_ENV, capture_output=True, text=True, timeout=300)


def test_hook_gets_protocol_v3_on_fd_20(chroot: Path) -> None:
    result = _apt_install(chroot, _deb(chroot, "vd-wiring-one"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (chroot / "tmp" / "hook.log").read_text().splitlines()
    assert "VERSION 3" in lines
    assert "FD 20" in lines
    ours = [line.split() for line in lines if line.startswith("vd-wiring-one ")]
    # pkg oldver oldarch oldMA cmp newver newarch newMA action
    assert ours, lines
    fields = ours[0]
    assert len(fields) == 9
    assert fields[1] == "-" and fields[4] == "<" and fields[5] == "1.0"
    assert fields[8].endswith(".deb") or fields[8] == "**CONFIGURE**"


def test_apt_works_with_hook_program_gone(chroot: Path) -> None:
    (chroot / HOOK.lstrip("/")).unlink()
    result = _apt_install(chroot, _deb(chroot, "vd-wiring-two"))
    assert result.returncode == 0, result.stdout + result.stderr
    status = subprocess.run(["chroot", str(chroot), "dpkg-query", "-W", "-f=${Status}",
                             "vd-wiring-two"], env=CLEAN_ENV, capture_output=True, text=True)
    assert status.stdout == "install ok installed"


def test_without_the_guard_apt_would_break(chroot: Path) -> None:
    """Control experiment: the "|| true" is what keeps apt working."""
    snippet = chroot / "etc/apt/apt.conf.d/99virtdeb"
    snippet.write_text(snippet.read_text().replace(" || true", ""))
    (chroot / HOOK.lstrip("/")).unlink()
    result = _apt_install(chroot, _deb(chroot, "vd-wiring-three"))
    assert result.returncode != 0
