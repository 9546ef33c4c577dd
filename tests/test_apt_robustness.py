"""virtdeb never breaks apt: real apt in a bookworm chroot with virtdeb installed.

The chroot is .cache/bookworm-libvirt (`make safety-image`: libvirt-daemon-system
and virtdeb's .deb installed), mounted as an overlay in a private mount
namespace, so every case starts from the same image and the cache never
changes.  Each case breaks virtdeb in one way, then `apt-get install` of an
unrelated small package (built here, installed from a file: no network) must
succeed and the package be installed:

- intact (the hook runs);
- virtdeb removed but not purged (its apt.conf.d snippet stays);
- the hook program deleted;
- the files of python3-augeas, python3-libvirt and python3-debian deleted;
- virtdeb's Python package hidden;
- virtdeb/apthook.py raising at import, and raising inside main().
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import faults as fl

pytestmark = pytest.mark.integration

IMAGE = fl.TOP / ".cache" / "bookworm-libvirt"
SNIPPET = "/etc/apt/apt.conf.d/99virtdeb"
HOOK = "/usr/lib/virtdeb/apt-hook"
MODULE = "/usr/lib/python3/dist-packages/virtdeb"
CASES = {
    "intact": [],
    "removed-not-purged": [["dpkg", "-r", "virtdeb"]],
    "hook-deleted": [["rm", "-f", HOOK]],
    # dpkg -r --force-depends would leave unmet dependencies, and then apt refuses every
    # install on its own ("apt --fix-broken install"): delete the modules' files instead
    "python-modules-missing": [["sh", "-c", "rm -rf /usr/lib/python3/dist-packages/augeas*"
                                " /usr/lib/python3/dist-packages/libvirt*"
                                " /usr/lib/python3/dist-packages/debian"]],
    "virtdeb-module-hidden": [["mv", MODULE, "/root/virtdeb-hidden"]],
    "apthook-raises-at-import": [["sh", "-c", f"echo 'raise RuntimeError(\"broken\")' >"
                                  f" {MODULE}/apthook.py"]],
    "apthook-main-raises": [["sh", "-c", f"printf 'def main(*a, **k):\\n    raise SystemExit"
                             f"(3)\\n' > {MODULE}/apthook.py"]],
}
# The control: without the "|| true" guard a deleted hook does break apt, so the
# cases above can fail.
CONTROL = [["sed", "-i", "s/ || true//", SNIPPET], ["rm", "-f", HOOK]]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, overlay mount in a private namespace)"
    if not (IMAGE / SNIPPET.lstrip("/")).exists():
        return (f"no bookworm chroot with virtdeb installed at {IMAGE}:"
                " run `make safety-image` (needs `make package`)")
    return None


def run_case(case: str) -> dict[str, object]:
    """Inside ``unshare -m``: overlay the image, break virtdeb, apt-get install."""
    with fl.overlay(IMAGE) as merged:
        deb = fl.tiny_deb(merged / "tmp", "vdtest")
        env = {**fl.CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"}
        setup = []
        for argv in CASES.get(case, CONTROL):
            proc = subprocess.run(["chroot", str(merged), *argv], env=env, capture_output=True,
                                  text=True, check=False)
            setup.append(f"{' '.join(argv)}: exit {proc.returncode} {proc.stderr.strip()[-200:]}")
        apt = subprocess.run(["chroot", str(merged), "apt-get", "install", "-y", "-q",
                              "--no-install-recommends", f"/tmp/{deb.name}"], env=env,
                             capture_output=True, text=True, check=False, timeout=300)
        status = subprocess.run(["chroot", str(merged), "dpkg-query", "-W", "-f=${Status}",
                                 "vdtest"], env=env, capture_output=True, text=True,
                                check=False).stdout
        snippet = (merged / SNIPPET.lstrip("/")).exists()
    return {"case": case, "setup": setup, "apt_exit": apt.returncode, "status": status,
            "snippet": snippet, "output": (apt.stdout + apt.stderr)[-3000:]}


def in_namespace(case: str) -> dict[str, object]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", fl.PY, "-m",
                           "tests.test_apt_robustness", case], cwd=fl.TOP, env=fl.CLEAN_ENV,
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_control_unguarded_hook_breaks_apt() -> None:
    result = in_namespace("control")
    assert result["apt_exit"] != 0, result["output"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_apt_still_works(case: str) -> None:
    result = in_namespace(case)
    assert result["snippet"], f"{SNIPPET} must still be there (the point of the case)"
    assert result["apt_exit"] == 0, f"{result['setup']}\n{result['output']}"
    assert result["status"] == "install ok installed", result["output"]
    if case != "apthook-raises-at-import":
        assert "Traceback" not in str(result["output"]), result["output"]


if __name__ == "__main__":
    print(json.dumps(run_case(sys.argv[1])))
