#!/usr/bin/python3
"""`virtdeb doctor` over the file rules vs one `augtool -r ROOT print /files` (default load).

Both on the same root, on two roots in turn:

* a copy of ``.cache/bookworm-libvirt`` (``make safety-image``: a bookworm
  minbase system with libvirt-daemon-system and virtdeb installed, so a real
  Debian /etc), without its /proc, /sys, /dev, /run and /tmp, plus the files
  of faults's root that such a system lacks (xend-config.sxp, bridge.conf,
  qemu-bridge-helper and a virtdeb.conf enabling everything, with the users
  alice and bob it names added to /etc/passwd and /etc/group), so that every
  file rule has its file;
* faults's small root (tests/harness/faults.py): only the files virtdeb touches.

The file rules are the registered rules whose plan changes a file on either
root (the same list on both).  Two numbers per root: the whole `virtdeb doctor` process (interpreter
start included), and the checks alone inside one process after the imports
(what a long-running caller pays).  Goal: doctor at least 10 times faster than
augtool's full load.  virtdeb's modules are byte-compiled first, as an
installed package's are.

And the start-up: `virtdeb doctor` on this host (root /, qemu:///system) against
`virt-host-validate qemu`, both whole processes, medians of paired runs.  Goal: doctor
within 3 times virt-host-validate's time.  Measured in the same turns, the floor under
it: a bare ``python3 -c pass``, and python3 doing only what any doctor that reads
libvirtd.conf and qemu.conf with libvirt's Augeas lenses must do first (AUGEAS_FLOOR).
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ENV, PY, TOP, best, command, paired_medians, ratio, ratio_line, runs

from tests.harness import faults as fl

IMAGE = TOP / ".cache" / "bookworm-libvirt"
SKIP = {"proc", "sys", "dev", "run", "tmp"}  # mount points and scratch: left empty
# What a real system lacks to give every file rule its file: taken from faults's root.
EXTRA = ("/etc/xen/xend-config.sxp", "/etc/qemu/bridge.conf", "/etc/virtdeb/virtdeb.conf",
         "/usr/lib/qemu/qemu-bridge-helper")
USERS = ("/etc/passwd", "/etc/group")  # faults's users are appended to these


def main() -> int:
    compileall.compile_dir(TOP / "virtdeb", quiet=1)
    with tempfile.TemporaryDirectory(dir=TOP / ".cache" if IMAGE.is_dir() else None) as tmp:
        small = fl.build_root(Path(tmp) / "small")
        roots = [("faults's small root (only the files virtdeb touches)", small)]
        if IMAGE.is_dir():
            roots.insert(0, (f"copy of {IMAGE.relative_to(TOP)} (a real bookworm system)",
                             image_root(Path(tmp) / "image", small)))
        else:
            print(f"doctor: {IMAGE.relative_to(TOP)} missing (make safety-image):"
                  " no measurement on a real system's root")
        rules = sorted({r for _, root in roots for r in fl.file_changes(root).rules()})
        print(f"doctor: file rules (plan a file change on either root): {' '.join(rules)}")
        for label, root in roots:
            bench(label, root, rules)
    startup()
    return 0


# The floor under any doctor that reads libvirtd.conf and qemu.conf with libvirt's
# lenses: python3 loading python-augeas as virtdeb does (virtdeb/augeaslib.py, a leaf
# module) and compiling the two lenses on an empty text, no file read, no check made.
AUGEAS_FLOOR = """
from virtdeb.augeaslib import augeas_instance
aug = augeas_instance()
for lens in ("Libvirtd.lns", "Libvirtd_qemu.lns"):
    aug.set("/t/text", "\\n")
    aug.text_store(lens, "/t/text", "/t/tree")
"""


def startup(count: int = 15) -> None:
    """virtdeb doctor against virt-host-validate qemu, on this host as it is, and the
    floor beside it: a bare python3, and python3 loading libvirt's two Augeas lenses."""
    if shutil.which("virt-host-validate") is None:
        print("doctor: virt-host-validate missing (libvirt-clients): no start-up ratio")
        return
    floor = [PY, "-c", AUGEAS_FLOOR]
    proc = subprocess.run(floor, capture_output=True, text=True, env=ENV, check=False)
    argvs = [[PY, "-m", "virtdeb", "doctor"], ["virt-host-validate", "qemu"],
             [PY, "-c", "pass"]] + ([floor] if proc.returncode == 0 else [])
    if proc.returncode != 0:
        print("doctor: no Augeas floor: loading libvirt's lenses failed:"
              f" {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    times = paired_medians(argvs, count)
    doctor, validate, bare = times[:3]
    floors = f"; floor: bare python3 {bare / validate:.2f}x"
    if len(times) > 3:
        floors += (f", python3 loading libvirt's two Augeas lenses (no virtdeb check)"
                   f" {times[3] / validate:.2f}x ({times[3] * 1000:.1f} ms)")
    print(ratio("virtdeb doctor / virt-host-validate qemu", doctor / validate, "<= 3x",
                f"{doctor * 1000:.1f} ms vs {validate * 1000:.1f} ms, medians of {count}"
                f" paired runs on this host{floors}"))


def bench(label: str, root: Path, rules: list[str]) -> None:
    print(f"doctor: root: {label}")
    doctor = [PY, "-m", "virtdeb", "doctor", "--root", str(root), "-c", fl.URI, *rules]
    t_doctor = best(command(doctor, ok=(0, 1)), runs())
    t_aug = best(command(["augtool", "-r", str(root), "print", "/files"]), max(3, runs() // 2))
    print(ratio_line("doctor", "virtdeb doctor (process)", t_doctor,
                     "augtool print /files", t_aug, ">= 10x"))
    t_checks = best(lambda: _checks(root, rules), runs())
    print(ratio_line("doctor", "doctor checks (in process)", t_checks,
                     "augtool print /files", t_aug, ">= 10x"))


def image_root(dest: Path, small: Path) -> Path:
    """A copy of IMAGE with EXTRA from ``small``.

    /usr is hard-linked rather than copied (300 MB; nothing here writes to it:
    doctor and augtool only read), everything else is copied.
    """
    dest.mkdir()
    for entry in sorted(IMAGE.iterdir()):
        target = dest / entry.name
        if entry.name in SKIP:
            target.mkdir()
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True,
                            copy_function=_link if entry.name == "usr" else shutil.copy2)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)
    for path in EXTRA:
        real = dest / path.lstrip("/")
        real.parent.mkdir(parents=True, exist_ok=True)
        if real.exists() or real.is_symlink():
            real.unlink()  # never write through a hard link into the image
        shutil.copy2(small / path.lstrip("/"), real)
    for path in USERS:
        lines = (small / path.lstrip("/")).read_text().splitlines(keepends=True)
        with open(dest / path.lstrip("/"), "a") as fh:
            fh.writelines(line for line in lines if line.split(":")[0] in fl.USERS)
    return dest


def _link(src: str, dst: str) -> None:
    os.link(src, dst, follow_symlinks=False)


def _checks(root: Path, rules: list[str]) -> None:
    from virtdeb.host import Host
    from virtdeb.rules import select

    host = Host(root=root, uri=fl.URI)
    for rule in select(rules):
        rule(host).check()
    host.close()


if __name__ == "__main__":
    sys.exit(main())
