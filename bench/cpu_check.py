#!/usr/bin/python3
"""Benchmark: ``virtdeb cpu-check`` vs the administrator's virsh loop, same run.

Defines 1,000 domains sharing 10 distinct CPU definitions on a private real
libvirtd (tests/harness/libvirtd.py), then times the real CLI in a subprocess and the
shell loop (``virsh dumpxml`` + ``virsh hypervisor-cpu-compare`` per domain), on every
one of the domains: nothing is extrapolated.  cpu-check is timed as the median of RUNS
runs.  Goal: cpu-check at least 100x faster.
Run as root: /usr/bin/python3 bench/cpu_check.py [DOMAINS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5  # cpu-check takes under a second: the median of a few runs; the loop runs once
sys.path.insert(0, str(ROOT))

from common import ratio  # noqa: E402

from tests.harness.libvirtd import PrivateLibvirtd  # noqa: E402
from tests.harness.procs import PATH  # noqa: E402

CPUS = [
    "<cpu mode='custom' match='exact'><model fallback='forbid'>Haswell</model>"
    "<vendor>Intel</vendor></cpu>",
    "<cpu mode='custom' match='exact'><model fallback='forbid'>pentium3</model></cpu>",
    "<cpu mode='custom' match='minimum'><model fallback='allow'>pentium2</model></cpu>",
    "<cpu mode='custom' match='exact'><model>pentium3</model>"
    "<feature policy='require' name='hle'/><feature policy='require' name='rtm'/></cpu>",
    "<cpu mode='custom' match='exact'><model>486</model></cpu>",
    "<cpu mode='custom' match='exact'><model>pentium</model>"
    "<feature policy='require' name='avx2'/></cpu>",
    "<cpu mode='custom' match='exact'><model>EPYC</model></cpu>",
    "<cpu mode='custom' match='exact'><model>Skylake-Server</model></cpu>",
    "<cpu mode='custom' match='exact'><model>pentium3</model>"
    "<feature policy='disable' name='sse'/></cpu>",
    "<cpu mode='custom' match='exact'><model>pentium2</model>"
    "<feature policy='require' name='sse2'/></cpu>",
]


def domain(i: int) -> str:
    return (f"<domain type='kvm'><name>bench{i:04d}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{CPUS[i % len(CPUS)]}"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>")


SHELL_LOOP = """
for d in $(virsh -c "$URI" list --all --name); do
  virsh -c "$URI" dumpxml --inactive "$d" > "$T/$d.xml"
  virsh -c "$URI" hypervisor-cpu-compare --error "$T/$d.xml" > /dev/null 2>&1 || echo "$d"
done
"""


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8"}
    with PrivateLibvirtd() as daemon:
        conn = daemon.connect()
        t0 = time.monotonic()
        for i in range(count):
            conn.defineXML(domain(i))
        print(f"defined {count} domains ({len(CPUS)} distinct CPU definitions)"
              f" in {time.monotonic() - t0:.1f} s")
        # warm the daemon's capability cache once, as a running host has it warm
        subprocess.run(["virsh", "-c", daemon.uri, "domcapabilities", "--virttype", "kvm"],
                       env=env, capture_output=True, check=True)

        times = []
        for _ in range(RUNS):
            t0 = time.monotonic()
            proc = subprocess.run(["/usr/bin/python3", "-m", "virtdeb", "cpu-check", "--connect",
                                   daemon.uri, "--root", str(daemon.scratch)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, check=False)
            times.append(time.monotonic() - t0)
        ours = statistics.median(times)
        last = proc.stdout.strip().splitlines()[-2:]
        print(f"virtdeb cpu-check: {ours:.2f} s for {count} domains (median of {RUNS}:"
              f" {' '.join(f'{t:.2f}' for t in times)}; exit {proc.returncode});"
              f" {last[0] if last else proc.stderr.strip()}")

        tmp = daemon.scratch / "bench-xml"
        tmp.mkdir()
        t0 = time.monotonic()
        loop = subprocess.run(["sh", "-c", SHELL_LOOP], env={**env, "URI": daemon.uri,
                              "T": str(tmp)}, capture_output=True, text=True, check=False)
        shell = time.monotonic() - t0
        print(f"shell loop (virsh dumpxml + virsh hypervisor-cpu-compare) on all {count}"
              f" domains: {shell:.1f} s, {shell / count * 1000:.1f} ms per domain"
              f" ({len(loop.stdout.split())} incompatible)")
        print(ratio(f"virsh loop / cpu-check at {count} domains", shell / ours, ">= 100x",
                    f"{shell:.1f} s vs {ours:.2f} s, both measured on all {count}"))
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
