"""``make demo``'s story, run in make check so that it cannot rot (tests/demo_story.py).

The same nine steps as ``make demo``, in an overlay of the demo chroot (``make
demo-image``, Debian 13 trixie unless VIRTDEB_DEMO_SUITE names another) with the chroot's
own libvirtd in private namespaces, and the package ``make package`` built.  About half
a minute.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import demo_story
from tests.harness.libvirtd import skip_reason

pytestmark = pytest.mark.integration
TOP = Path(__file__).resolve().parents[1]
SUITE = os.environ.get("VIRTDEB_DEMO_SUITE", "trixie")
IMAGE = TOP / ".cache" / f"demo-{SUITE}"
KNOWN_AUGEAS_BUG = "virtdeb built a tree Dnsmasq.lns cannot write"


def test_the_demo_story_runs_to_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if not (IMAGE / "usr/sbin/libvirtd").is_file():
        pytest.skip(f"no demo chroot at {IMAGE}: run `make demo-image`")
    debs = sorted((TOP / ".build").glob("virtdeb_*_all.deb"))
    if not debs:
        pytest.skip("no .build/virtdeb_*_all.deb: run `make package`")
    code = demo_story.main(["--image", str(IMAGE), "--deb", str(debs[-1])])
    out = capsys.readouterr().out
    summary = out[out.rfind("virtdeb demo on "):]
    for n in range(1, 10):
        assert f"\n=== {n}. " in out
    assert "cannot connect" not in out and "Traceback" not in out
    assert "host: every daemon stopped" in summary
    failed = [line.split()[1] for line in summary.splitlines()[2:11] if line.endswith("FAIL")]
    if failed == ["dnsmasq"] and KNOWN_AUGEAS_BUG in out:
        # trixie/sid: python3-augeas 1.2.0 stores '' for a value-less node, which the
        # Dnsmasq lens refuses on save (bind-interfaces)
        pytest.xfail(f"the dnsmasq step fails on {SUITE}: {KNOWN_AUGEAS_BUG}")
    assert code == 0, summary
    assert "9 of 9 steps PASS" in summary
