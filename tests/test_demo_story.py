"""``make demo``'s story, run in make check so that it cannot rot (tests/demo_story.py).

Both modes, with the package ``make package`` built:

- chroot: the nine steps in an overlay of the demo chroot (``make demo-image``, Debian 13
  trixie unless VIRTDEB_DEMO_SUITE names another) with the chroot's own libvirtd in
  private namespaces (about half a minute; in each suite's pytest);
- booted: the ten steps of ``make demo`` (the reboot after the microcode upgrade
  included) on .cache/booted-trixie booted in systemd-nspawn; under ``make booted``
  (marker ``booted``, VIRTDEB_BOOTED_SUITES naming trixie), about two minutes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import demo_story
from tests.harness.libvirtd import skip_reason

TOP = Path(__file__).resolve().parents[1]
SUITE = os.environ.get("VIRTDEB_DEMO_SUITE", "trixie")
IMAGE = TOP / ".cache" / f"demo-{SUITE}"
KNOWN_AUGEAS_BUG = "virtdeb built a tree Dnsmasq.lns cannot write"


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = demo_story.main(argv)
    out = capsys.readouterr().out
    return code, out, out[out.rfind("virtdeb demo on "):]


def _deb() -> Path:
    debs = sorted((TOP / ".build").glob("virtdeb_*_all.deb"))
    if not debs:
        pytest.skip("no .build/virtdeb_*_all.deb: run `make package`")
    return debs[-1]


def _common(out: str, summary: str, steps: int) -> None:
    for n in range(1, steps + 1):
        assert f"\n=== {n}. " in out
    assert f"\n=== {steps + 1}. " not in out
    assert "cannot connect" not in out and "Traceback" not in out
    assert "host: every process stopped" in summary


@pytest.mark.integration
def test_the_demo_story_runs_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if not (IMAGE / "usr/sbin/libvirtd").is_file():
        pytest.skip(f"no demo chroot at {IMAGE}: run `make demo-image`")
    code, out, summary = _run(capsys, ["--image", str(IMAGE), "--deb", str(_deb())])
    _common(out, summary, 9)
    failed = [line.split()[1] for line in summary.splitlines()[2:11] if line.endswith("FAIL")]
    if failed == ["dnsmasq"] and KNOWN_AUGEAS_BUG in out:
        # trixie/sid: python3-augeas 1.2.0 stores '' for a value-less node, which the
        # Dnsmasq lens refuses on save (bind-interfaces)
        pytest.xfail(f"the dnsmasq step fails on {SUITE}: {KNOWN_AUGEAS_BUG}")
    assert code == 0, summary
    assert "9 of 9 steps PASS" in summary


@pytest.mark.booted
@pytest.mark.integration
def test_the_booted_demo_reboots_and_the_boot_check_names_the_guest(
        capsys: pytest.CaptureFixture[str]) -> None:
    suites = os.environ.get("VIRTDEB_BOOTED_SUITES")
    if suites is None:
        pytest.skip("the booted demo runs under `make booted` (VIRTDEB_BOOTED_SUITES)")
    if "trixie" not in suites.split():
        pytest.skip("the booted demo runs on trixie, not in VIRTDEB_BOOTED_SUITES")
    image = TOP / ".cache/booted-trixie"
    # under make booted a missing image is a failure, not a skip
    assert (image / "usr/sbin/libvirtd").is_file(), f"no {image}: make booted-images"
    code, out, summary = _run(capsys, ["--booted", "--image", str(image), "--deb", str(_deb())])
    _common(out, summary, 10)
    assert code == 0, summary
    assert "10 of 10 steps PASS" in summary
    reboot = out[out.index("\n=== 9. reboot"):out.index("\n=== 10. ")]
    assert "virtdeb-cpu-check" in reboot and "legacy-guest" in reboot, reboot
