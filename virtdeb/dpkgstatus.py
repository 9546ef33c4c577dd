"""dpkg's status file and version order, read without python-debian (start-up time).

A leaf module (it imports only errors): the Host reads one package's paragraph with
:func:`paragraph` and :func:`fields`, rules compare versions with :func:`compare`.

:func:`paragraph` finds the paragraph that splitting the file at every blank line
(``data.split(b"\\n\\n")``) and taking the first paragraph whose first ``Package:``
field names the package would give, without splitting the whole file: a real status
file has a thousand paragraphs and a rule asks about a few.  :func:`fields` reads a
paragraph as python-debian's ``PackageFile`` reads it (its two regular expressions,
line for line, errors on the same line).  :func:`compare` is dpkg's order of versions
(``verrevcmp`` of lib/dpkg/version.c, as apt_pkg.version_compare), after the check of
python-debian's ``Version`` (an invalid version string is a ValueError).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from virtdeb.errors import ParseError

_SPACE = b" \t\n\r\f\v"  # what \s matches in a bytes pattern
_FIRST_PACKAGE = re.compile(rb"^Package:[ \t]*(\S+)", re.M)
# python-debian 0.1.49's PackageFile.re_field and re_continuation
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-_]+):(?:\s*(.*?))?\s*$")
_CONTINUATION = re.compile(r"^\s+(?:\.|(\S.*?)\s*)$")
# python-debian's BaseVersion.re_valid_version
_VALID_VERSION = re.compile(r"^((?P<epoch>\d+):)?(?P<upstream_version>[A-Za-z0-9.+:~-]+?)"
                            r"(-(?P<debian_revision>[A-Za-z0-9+.~]+))?$")


def _package_lines(data: bytes, name: bytes) -> Iterator[int]:
    """Where each line ``Package:[ \t]*NAME`` (NAME ending at a space or the end)
    starts, in order: found from the name's occurrences (a fast search of the bytes),
    not by trying a pattern at each of the thousand ``Package:`` lines."""
    at = data.find(name)
    while at >= 0:
        field = at
        while field and data[field - 1] in b" \t":
            field -= 1
        line = field - len(b"Package:")
        after = at + len(name)
        if (line >= 0 and data[line:field] == b"Package:"
                and (line == 0 or data[line - 1] == 0x0A)
                and (after == len(data) or data[after] in _SPACE)):
            yield line
        at = data.find(name, at + 1)


def paragraph(data: bytes, package: str) -> tuple[int, int] | None:
    """(start, end) of ``package``'s paragraph in ``data``, or None.

    The paragraph is the first one (paragraphs split at ``\n\n``) whose first
    ``Package:`` field is ``package``, without its leading newlines (a run of three or
    more newlines leaves them at the start of the next paragraph).
    """
    for line in _package_lines(data, package.encode()):
        start = data.rfind(b"\n\n", 0, line)
        start = 0 if start < 0 else start + 2
        end = data.find(b"\n\n", line)
        end = len(data) if end < 0 else end
        para = data[start:end]
        first = _FIRST_PACKAGE.search(para)
        if first is None or first.group(1) != package.encode():
            continue  # the paragraph of another package (its first Package: field)
        return start + len(para) - len(para.lstrip(b"\n")), end
    return None


def fields(data: bytes, span: tuple[int, int], shown: str, hint: str) -> dict[str, str]:
    """The fields of the paragraph ``span`` (from :func:`paragraph`) of ``data``, the
    bytes of file ``shown``, as python-debian's ``PackageFile(shown, BytesIO(paragraph +
    b"\n"))`` reads them: the fields of every record in it, a later one replacing an
    earlier one.

    A line that is neither a field, a continuation nor blank is a ParseError on its
    line; bytes that are not UTF-8 are one on the paragraph's first line (python-debian's
    error has no line).
    """
    start, end = span
    # BytesIO.readline's lines: split at b"\n" only (not at \r, as splitlines would)
    lines = iter([part + b"\n" for part in data[start:end].split(b"\n")])
    lineno = 0  # in the paragraph; the line in the file is counted for an error only

    def error(line: int) -> ParseError:
        return ParseError(shown, data.count(b"\n", 0, start) + line, None,
                          "not a dpkg status paragraph", hint)

    def read() -> str:
        try:
            return next(lines, b"").decode("utf-8")
        except UnicodeDecodeError:
            raise error(1) from None

    out: dict[str, str] = {}
    record = False
    line = read()
    lineno += 1
    while line:
        if line.strip(" \t") == "\n":
            if not record:
                raise error(lineno)  # python-debian: "expected package record"
            record = False
            line = read()
            lineno += 1
            continue
        match = _FIELD.match(line)
        if not match:
            raise error(lineno)  # python-debian: "expected package field"
        name, contents = match.group(1), match.group(2) or ""
        while True:
            line = read()
            lineno += 1
            more = _CONTINUATION.match(line)
            if not more:
                break
            contents = f"{contents}\n{more.group(1) or ''}"
        out[name] = contents
        record = True
    return out


def _order(c: str) -> int:
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    if c == "~":
        return -1
    return ord(c) + 256 if c else 0


def _at(s: str, i: int) -> str:
    return s[i] if i < len(s) else ""  # past the end: the C string's NUL


def _fragment(a: str, b: str) -> int:
    """apt's CmpFragment: non-digit runs by _order, digit runs as numbers, then "~" sorts
    before the end and anything else after it."""
    i = j = 0
    while i < len(a) and j < len(b):
        while i < len(a) and j < len(b) and not (a[i].isdigit() and b[j].isdigit()):
            if _order(a[i]) != _order(b[j]):
                return _order(a[i]) - _order(b[j])
            i += 1
            j += 1
        while _at(a, i) == "0":
            i += 1
        while _at(b, j) == "0":
            j += 1
        first_diff = 0
        while _at(a, i).isdigit() and _at(b, j).isdigit():
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if _at(a, i).isdigit():
            return 1
        if _at(b, j).isdigit():
            return -1
        if first_diff:
            return first_diff
    if i >= len(a) and j >= len(b):
        return 0
    if i >= len(a):
        return 1 if b[j] == "~" else -1
    return -1 if a[i] == "~" else 1


def _split(version: str) -> tuple[int, str, str | None]:
    """(epoch, upstream, revision or None) of a version as apt_pkg splits it (the epoch
    before the first ":", the revision after the last "-"), once python-debian's
    ``Version`` has found it valid (else ValueError)."""
    match = _VALID_VERSION.match(version)
    if not match or (match.group("epoch") is None and ":" in match.group("upstream_version")):
        raise ValueError(f"Invalid version string {version!r}")
    epoch, _, rest = version.partition(":") if match.group("epoch") else ("0", "", version)
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        return int(epoch), rest, None
    return (int(epoch), upstream, revision) if upstream else (int(epoch), "", None)


def compare(a: str, b: str) -> int:
    """< 0, 0 or > 0 as version ``a`` sorts before, with or after ``b``: what
    python-debian's ``Version`` comparison answers (apt_pkg.version_compare)."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return 1 if ea > eb else -1
    main = _fragment(ua, ub)
    if main or (ra is None and rb is None):
        return main
    return _fragment("0" if ra is None else ra, "0" if rb is None else rb)
