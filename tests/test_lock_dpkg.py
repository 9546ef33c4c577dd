"""No deadlock with dpkg: real dpkg, virtdeb's real trigger, in a bookworm chroot.

The chroot is .cache/bookworm-libvirt (``make safety-image``: virtdeb's .deb
installed, this tree's Python package copied over its own), as a throwaway
overlay in a private mount namespace.  A small package shipping a file under
/lib/firmware/intel-ucode activates virtdeb's file trigger, whose postinst runs
``/usr/lib/virtdeb/maint triggered``: the cpu rule writes its "check after
boot" marker.  The holder of virtdeb's lock on that root is this process:

- nested: the holder runs ``dpkg -i`` through ``Host.run`` (as a locked
  ``virtdeb apply`` runs every command); the trigger goes on under the
  holder's lock at once and does its work;
- control: the same dpkg, started without the holder's token, waits the
  bounded time, says who holds the lock and "busy", does nothing, and dpkg
  still succeeds;
- free: with no holder the trigger does its work (the marker is the evidence).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import faults as fl
from virtdeb import lock
from virtdeb.host import Host

pytestmark = pytest.mark.integration

IMAGE = fl.TOP / ".cache" / "bookworm-libvirt"
MODULE = "usr/lib/python3/dist-packages/virtdeb"
MARKER = "var/lib/virtdeb/cpu/check-after-boot"
WAIT = 3


def ucode_deb(where: Path) -> Path:
    src = where / "src-vducode"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(
        "Package: vducode\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: virtdeb tests <root@localhost>\nDescription: fake microcode file\n")
    (src / "lib/firmware/intel-ucode").mkdir(parents=True)
    (src / "lib/firmware/intel-ucode/06-ff-01").write_bytes(b"fake microcode\n")
    deb = where / "vducode_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(src), str(deb)], check=True,
                   env=fl.CLEAN_ENV, stdout=subprocess.DEVNULL)
    shutil.rmtree(src)
    return deb


def run_case(case: str) -> dict[str, object]:
    """Inside ``unshare -m``: overlay the image, install this tree's virtdeb, dpkg -i."""
    with fl.overlay(IMAGE) as merged:
        # over the installed one: the files dpkg lists stay (py3compile runs in the
        # postinst, also for a trigger, and compiles every file of the package)
        shutil.copytree(fl.TOP / "virtdeb", merged / MODULE, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        deb = ucode_deb(merged / "tmp")
        argv = ["chroot", str(merged), "dpkg", "-i", f"/tmp/{deb.name}"]
        host = Host(root=merged)
        start = time.monotonic()
        if case == "free":
            proc = host.run(argv, check=False)
        else:
            with lock.hold(host.path(lock.LOCK), "virtdeb apply (test holder)"):
                if case == "nested":
                    proc = host.run(argv, check=False)
                else:  # control: no token, a short wait
                    proc = subprocess.run(argv, env={**fl.CLEAN_ENV, lock.WAIT_ENV: str(WAIT)},
                                          capture_output=True, text=True, check=False,
                                          timeout=600)
        seconds = time.monotonic() - start
        marker = (merged / MARKER).exists()
        status = subprocess.run(["chroot", str(merged), "dpkg-query", "-W", "-f=${Status}",
                                 "vducode", "virtdeb"], env=fl.CLEAN_ENV, capture_output=True,
                                text=True, check=False).stdout
    return {"case": case, "exit": proc.returncode, "output": proc.stdout + proc.stderr,
            "seconds": seconds, "marker": marker, "status": status, "holder": os.getpid()}


def in_namespace(case: str, request: pytest.FixtureRequest) -> dict[str, object]:
    if os.geteuid() != 0:
        pytest.skip("needs root (chroot, overlay mount in a private namespace)")
    if not (IMAGE / MODULE).is_dir():
        pytest.skip(f"no bookworm chroot with virtdeb installed at {IMAGE}:"
                    " run `make safety-image` (needs `make package`)")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", fl.PY, "-m",
                           "tests.test_lock_dpkg", case], cwd=fl.TOP, env=fl.CLEAN_ENV,
                          capture_output=True, text=True, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout)
    fl.say(request, f"lock[dpkg-{case}]: dpkg exit {result['exit']} in"
                    f" {float(result['seconds']):.1f} s, trigger's marker"
                    f" {'written' if result['marker'] else 'not written'}")
    return result


def test_trigger_of_a_dpkg_the_holder_started_goes_on(request: pytest.FixtureRequest) -> None:
    result = in_namespace("nested", request)
    out = str(result["output"])
    assert result["exit"] == 0, out
    assert result["status"] == "install ok installedinstall ok installed", out
    assert result["marker"], f"the trigger did not run the cpu rule:\n{out}"
    assert "waiting" not in out and "busy" not in out, out
    assert float(str(result["seconds"])) < 120


def test_control_without_the_token_waits_bounded_and_dpkg_succeeds(
        request: pytest.FixtureRequest) -> None:
    result = in_namespace("control", request)
    out = str(result["output"])
    assert result["exit"] == 0, out
    assert result["status"] == "install ok installedinstall ok installed", out
    assert not result["marker"], "a busy trigger must change nothing"
    assert (f"waiting up to {WAIT} s for the lock: pid {result['holder']}"
            " (virtdeb apply (test holder))") in out, out
    assert "busy" in out and "run virtdeb apply cpu" in out, out
    assert float(str(result["seconds"])) >= WAIT


def test_without_a_holder_the_trigger_works(request: pytest.FixtureRequest) -> None:
    result = in_namespace("free", request)
    assert result["exit"] == 0 and result["marker"], result["output"]


if __name__ == "__main__":
    print(json.dumps(run_case(sys.argv[1])))
