#!/usr/bin/python3
"""virtdeb's `maint configure` (all rules) vs libvirt-daemon-system's own postinst.

Both run for real, in the same throwaway bookworm chroot that has
libvirt-daemon-system and virtdeb installed (`make safety-image`,
.cache/bookworm-libvirt), mounted as an overlay in a private mount namespace so
that the cached image never changes.  Also `dpkg-reconfigure -fnoninteractive`
of each package (debconf, the postinst and virtdeb's config script).  There is
no libvirtd in the chroot: the network rule reports that and goes on, as on a
host where the daemon is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import ENV, PY, TOP, best, command, ratio_line

from tests.harness.faults import overlay

IMAGE = TOP / ".cache" / "bookworm-libvirt"
POSTINST = "/var/lib/dpkg/info/libvirt-daemon-system.postinst"
RUNS = int(os.environ.get("BENCH_RUNS", "7")) // 2 + 1


def in_namespace() -> int:
    with overlay(IMAGE) as merged:
        return _measure(merged)


def _measure(merged: Path) -> int:
    env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
    env.pop("PYTHONPATH")
    version = subprocess.run(["chroot", str(merged), "dpkg-query", "-W", "-f=${Version}",
                              "libvirt-daemon-system"], capture_output=True, text=True,
                             env=env, check=True).stdout

    def chroot(*argv: str) -> list[str]:
        return ["chroot", str(merged), *argv]

    t_maint = best(command(chroot("/usr/lib/virtdeb/maint", "configure"), env=env), RUNS)
    t_post = best(command(chroot(POSTINST, "configure", version), env=env), RUNS)
    print(ratio_line("postinst", "virtdeb maint configure (all rules)", t_maint,
                     f"libvirt-daemon-system {version} postinst configure", t_post,
                     "anchor/subject >= 1x"))
    t_rv = best(command(chroot("dpkg-reconfigure", "-fnoninteractive", "virtdeb"),
                        env=env), RUNS)
    t_rl = best(command(chroot("dpkg-reconfigure", "-fnoninteractive",
                               "libvirt-daemon-system"), env=env), RUNS)
    print(ratio_line("postinst", "dpkg-reconfigure virtdeb", t_rv,
                     "dpkg-reconfigure libvirt-daemon-system", t_rl, "anchor/subject >= 1x"))
    return 0


def main() -> int:
    if os.geteuid() != 0:
        print("postinst: needs root (chroot, mounts in a private namespace): skipped")
        return 0
    if not (IMAGE / POSTINST.lstrip("/")).exists():
        print(f"postinst: no {IMAGE} (run `make safety-image`): skipped")
        return 0
    if os.environ.get("VIRTDEB_BENCH_NS") != "1":
        return subprocess.run(["unshare", "-m", "--propagation", "private", PY,
                               str(Path(__file__).resolve())],
                              env={**ENV, "VIRTDEB_BENCH_NS": "1"}, check=False).returncode
    return in_namespace()


if __name__ == "__main__":
    sys.exit(main())
