#!/usr/bin/python3
"""Benchmark: ``virtdeb cpu-baseline`` over N = 1, 3, 8 hosts vs the admin's virsh recipe.

Every "host" is a real private libvirtd (tests/harness/libvirtd.py) with GUESTS
defined domains (custom CPUs: the host-model written out, a usable named model, and
one needing features no host has, all read from what libvirt reports).  Same run,
same hosts, for each N:

* virtdeb: ``virtdeb cpu-baseline --json URI...`` in a subprocess (interpreter
  start included);
* the recipe an admin would script: per host ``virsh domcapabilities`` and the
  host-model CPU cut out of it (awk), ``virsh hypervisor-cpu-baseline --migratable``
  over them, then per guest ``virsh dumpxml --inactive`` and
  ``virsh hypervisor-cpu-compare --error`` on every other host.

Printed: the ratio recipe/virtdeb per N, and virtdeb's growth N=8 / N=1 (goal:
at most 2x, since the hosts are asked in parallel).  Run as root.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from common import ENV, PY, best, command, ratio_line, runs

from tests.harness import cpucaps
from tests.harness.libvirtd import PrivateLibvirtd, skip_reason

SIZES = (1, 3, 8)
GUESTS = 3

RECIPE = r"""
set -eu
i=0
for u in $URIS; do
  i=$((i+1))
  virsh -c "$u" domcapabilities > "$T/caps$i.xml"
  awk "/<mode name='host-model'/ {f=1; print \"<cpu mode='custom' match='exact'>\"; next}
       f && /<\/mode>/ {print \"</cpu>\"; f=0} f" "$T/caps$i.xml" > "$T/cpu$i.xml"
done
cat "$T"/cpu*.xml > "$T/all.xml"
set -- $URIS
virsh -c "$1" hypervisor-cpu-baseline --migratable "$T/all.xml" > "$T/baseline.xml"
for home in $URIS; do
  for d in $(virsh -c "$home" list --all --name); do
    virsh -c "$home" dumpxml --inactive "$d" > "$T/$d.xml"
    for u in $URIS; do
      [ "$u" = "$home" ] && continue
      virsh -c "$u" hypervisor-cpu-compare --error "$T/$d.xml" > /dev/null 2>&1 \
        || echo "$d cannot move to $u"
    done
  done
done
"""


def domain(name: str, cpu: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}</domain>")


def start(n: int) -> PrivateLibvirtd:
    # one core at start: libvirt's qemu capabilities cache holds CPUID, which differs per
    # core on this VM (a mismatch costs a 4 s re-probe per daemon, not what a host pays)
    with cpucaps.one_core():
        daemon = PrivateLibvirtd().start()
    conn = daemon.connect()
    try:
        # from what libvirt reports, never this machine's model or features by name
        cpus = [cpucaps.host_model_cpu(conn), "<cpu mode='custom' match='exact'><model"
                f" fallback='forbid'>{cpucaps.usable_models(conn)[0]}</model></cpu>",
                cpucaps.host_model_cpu(conn, cpucaps.lacking(conn))]
        for i in range(GUESTS):
            conn.defineXML(domain(f"h{n}g{i}", cpus[i % len(cpus)]))
    finally:
        conn.close()
    return daemon


def main() -> int:
    reason = skip_reason()
    if reason:
        print(f"cpu_baseline: not run: {reason}")
        return 0
    repeat = runs()
    with contextlib.ExitStack() as stack:
        daemons = []
        for n in range(max(SIZES)):
            daemons.append(start(n))
            stack.callback(daemons[-1].stop)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ours: dict[int, float] = {}
        for n in SIZES:
            uris = [d.uri for d in daemons[:n]]
            virtdeb = command([PY, "-m", "virtdeb", "cpu-baseline", "--json", "--root",
                               str(tmp), *uris], ok=(0, 1))
            recipe = command(["sh", "-c", RECIPE], env={**ENV, "URIS": " ".join(uris),
                                                        "T": str(tmp)})
            virtdeb()  # warm: every daemon has answered once, as running hosts have
            ours[n] = best(virtdeb, repeat)
            theirs = best(recipe, max(1, min(repeat, 3)))
            compares = GUESTS * n * (n - 1)
            print(ratio_line(f"cpu-baseline N={n} ({n * GUESTS} guests, {compares} compares)",
                             "virtdeb cpu-baseline", ours[n], "virsh recipe", theirs,
                             "virtdeb faster"), flush=True)
        growth = ours[max(SIZES)] / ours[min(SIZES)]
        print(f"cpu-baseline growth: N={max(SIZES)} {ours[max(SIZES)] * 1000:.1f} ms /"
              f" N={min(SIZES)} {ours[min(SIZES)] * 1000:.1f} ms = {growth:.2f}x"
              f" (goal <= 2x) {'ok' if growth <= 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
