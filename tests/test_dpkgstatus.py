"""virtdeb.dpkgstatus against what it replaces: python-debian's PackageFile over the whole
status file split at blank lines (the Host's reader before), and python-debian's
Version (its validity) with apt_pkg's order (dpkg's algorithm, which python-debian's
Version uses where python3-apt is installed), on this machine's real
/var/lib/dpkg/status and on damaged or odd paragraphs."""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import apt_pkg
import pytest

from debian import debian_support
from virtdeb import dpkgstatus
from virtdeb.errors import ParseError
from virtdeb.host import DPKG_STATUS, Host

apt_pkg.init_system()

REAL = Path(DPKG_STATUS)
HINT = "dpkg's database looks damaged: see dpkg --audit"
_PACKAGE = re.compile(rb"^Package:[ \t]*(\S+)", re.M)


def reference(data: bytes, package: str) -> dict[str, str] | tuple[str, int]:
    """What the Host answered before: the first paragraph (split at b"\\n\\n") whose
    first Package: field is ``package``, read by python-debian; ("error", line)."""
    line = 1
    for para in data.split(b"\n\n"):
        match = _PACKAGE.search(para)
        if match and match.group(1).decode("utf-8", "replace") == package:
            body = para.lstrip(b"\n")
            first = line + len(para) - len(body)
            out: dict[str, str] = {}
            try:
                for pkg in debian_support.PackageFile(DPKG_STATUS, io.BytesIO(body + b"\n")):
                    out.update(pkg)
            except (debian_support.ParseError, UnicodeDecodeError) as exc:
                return "error", first + getattr(exc, "lineno", 1) - 1
            return out
        line += para.count(b"\n") + 2
    return {}


def ours(data: bytes, package: str) -> dict[str, str] | tuple[str, int]:
    span = dpkgstatus.paragraph(data, package)
    if span is None:
        return {}
    try:
        return dpkgstatus.fields(data, span, DPKG_STATUS, HINT)
    except ParseError as exc:
        assert exc.message.endswith(f": not a dpkg status paragraph; {HINT}")
        assert exc.path == DPKG_STATUS and exc.line is not None
        return "error", exc.line


@pytest.mark.skipif(not REAL.is_file(), reason="no dpkg status file here")
def test_every_package_of_the_real_status_file() -> None:
    data = REAL.read_bytes()
    names = [m.group(1).decode() for m in _PACKAGE.finditer(data)]
    assert len(names) > 50
    for name in [*names, "no-such-package", names[0][:-1]]:
        assert ours(data, name) == reference(data, name), name


ODD = [
    b"Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nVersion: 2\n",
    # runs of blank lines, continuation lines, a "." line
    b"Package: a\nVersion: 1\n\n\nPackage: b\nVersion: 2\n\n\n\nPackage: c\nX: y\n z\n .\n  w \n",
    # a line that is no field: an error on its line
    b"Package: x\n\nPackage: a\nbogus line\n\nPackage: b\nVersion: 2\n",
    # a blank line of spaces ends a record inside the paragraph
    b"Package: a\nVersion: 1\n \nPackage: a2\nVersion: 3\n\nPackage: b\n",
    b"Package: a\n  \t\n\nPackage: b\nFoo:bar\n baz\n",
    # bytes that are not UTF-8: an error on the paragraph's first line
    b"Package: z\n\nPackage: a\nDescription: \xff\xfe\nVersion: 1\n\n"
    b"Package: b\nVersion: \xc3\xa9\n",
    # \r is no line end for dpkg's reader; a tab after Package:; a repeated package
    b"Package: a\nVersion: 1\r\nX: a\rb\n\nPackage:\tb\nVersion: 2\n\nPackage: b\nVersion: 9\n",
    # the first Package: field of a paragraph names it
    b"Version: 0\nPackage: x\nPackage: a\n\nPackage: a\nVersion: 5\n",
    b"\n\nPackage: a\n\n\n\n\nPackage: b\n\n",
    b"Package: a\n Package: b\n\nPackage: b\n",
    b"Package: ab\n\nPackage: a b\n\nPackage: a\n",
    b"Package: a\nPackage: b\n",
    b"XPackage: a\n\nPackage:    a   \nVersion: 7\n",
]


@pytest.mark.parametrize("data", ODD)
def test_odd_and_damaged_paragraphs(data: bytes) -> None:
    for name in ("a", "b", "c", "x", "z", "a2", "ab", "nothing"):
        assert ours(data, name) == reference(data, name), name


def test_the_host_reads_one_package(tmp_path: Path) -> None:
    status = tmp_path / DPKG_STATUS.lstrip("/")
    status.parent.mkdir(parents=True)
    status.write_bytes(b"Package: libvirt-daemon\nStatus: install ok installed\n"
                       b"Version: 9.0.0-4\n\nPackage: nc\nStatus: deinstall ok config-files\n"
                       b"Version: 1\n\nPackage: bad\nnot a field\n")
    host = Host(root=tmp_path)
    assert host.version("libvirt-daemon") == "9.0.0-4"
    assert not host.installed("nc") and host.version("nc") is None
    assert not host.installed("missing")
    with pytest.raises(ParseError) as caught:
        host.installed("bad")
    assert (caught.value.path, caught.value.line) == (DPKG_STATUS, 10)  # "not a field"
    assert not Host(root=tmp_path / "empty").installed("libvirt-daemon")


VERSIONS = ["1.0", "1.0-0", "1.0-1", "1:1.0", "0:1.0", "1.0~rc1", "1.0~", "1.0+", "1.0a",
            "1.0.0", "1.00", "01.0", "1.0-1~bpo", "2:0", "1:2:3-4", "1.0-a-b",
            "9.0.0-4+deb12u2", "6.8", "10.4.0", "10.6.0-2", "1.0~~", "1.0~~a", "1.0-0.1",
            "1.0-", "1:1.0-", "1.0--", "0:0", "00:1", "1.0-~", "1.0-00", "1.0-0~", "1.a",
            "1.A", "1.+", "1..0", "10", "9", "007", "7", "1:-5", "1:-6",
            # invalid: python-debian's ValueError
            "a", "~", ":1", "1:", "a:b", "1.0 ", "", "1_0", "1:a:b-c"]


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _reference(a: str, b: str) -> int | str:
    try:
        # python-debian says which versions are valid (ValueError), apt_pkg orders them
        for version in (a, b):
            debian_support.Version(version)
        return _sign(apt_pkg.version_compare(a, b))
    except ValueError as exc:
        return str(exc)


def _ours(a: str, b: str) -> int | str:
    try:
        return _sign(dpkgstatus.compare(a, b))
    except ValueError as exc:
        return str(exc)


def test_version_order_is_python_debians() -> None:
    versions = list(VERSIONS)
    if REAL.is_file():
        versions += sorted(set(re.findall(r"^Version: (\S+)$",
                                          REAL.read_text("utf-8", "replace"), re.M)))
    pairs = [(a, b) for a in VERSIONS for b in versions]
    rng = random.Random(19)
    pairs += [tuple(rng.sample(versions, 2)) for _ in range(5000)]  # type: ignore[misc]
    assert [p for p in pairs if _ours(*p) != _reference(*p)] == []
    assert dpkgstatus.compare("9.0.0-4+deb12u2", "6.8") > 0
    assert dpkgstatus.compare("10.4.0", "10.4.0-1") < 0
