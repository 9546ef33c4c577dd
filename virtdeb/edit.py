"""The one Editor: a file's bytes through an Augeas lens, and back.

The Editor never writes: it reads the exact bytes (refusing symlinks), parses
them with one lens (``text_store``; no lens autoloading, no file loading),
lets the rule change the tree, renders the text again (``text_retrieve``) and
leaves a :class:`FileChange` in ``change`` when the bytes differ.  The
journal makes the change with the one atomic writer.  A parse error raises
:class:`ParseError` naming the file, line and column.

    with Editor(host, "/etc/dnsmasq.d/00_libvirtd.conf", "Dnsmasq.lns", rule="dnsmasq") as ed:
        ed.set("interface", "lo")
    changes = ed.changes
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any

from virtdeb import fsio
from virtdeb.augeaslib import augeas_instance
from virtdeb.errors import ParseError
from virtdeb.host import Host

if TYPE_CHECKING:  # imported where a change is made: doctor makes none
    from virtdeb.effects.file import FileChange

log = logging.getLogger(__name__)

def _text(value: str | bytes | None) -> str | None:
    """A node's value alike on python3-augeas 0.5.0 and 1.2.0: no value and "" are None.

    0.5.0 reads both as None; 1.2.0 reads no value as None and "" as b"".
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value or None


def _error_of(aug: Any, tree: str) -> tuple[int | None, int | None, str]:
    """Line, column and text of the error text_store/text_retrieve recorded for TREE.

    Augeas records it under /augeas/text<TREE>/error (for a retrieve too, not under
    the output node): the kind (parse_failed, put_failed) and its message, of which
    the first line is kept.
    """
    err = f"/augeas/text{tree}/error"
    kind = _text(aug.get(err)) or "error"
    message = _text(aug.get(f"{err}/message"))
    if message:  # a put error quotes the whole lens on further lines: one line is enough
        message = message.splitlines()[0].rstrip(": ")
        message = message if len(message) <= 200 else message[:197] + "..."
    line = _text(aug.get(f"{err}/line"))
    char = _text(aug.get(f"{err}/char"))
    return (int(line) if line else None, int(char) if char else None,
            f"{kind}: {message}" if message else kind)


CREATED_DIR = "/var/lib/virtdeb/created"


def created_marker(host: Host, rule: str, path: str) -> FileChange:
    """An empty marker under /var/lib/virtdeb/created/PATH: virtdeb made PATH.

    postrm reads these on purge and removes exactly the files virtdeb created.
    """
    from virtdeb.effects.file import FileChange

    marker = CREATED_DIR + path
    before = fsio.read_bytes(host.path(marker), marker)
    return FileChange(rule, marker, before, b"", mode=0o644)


def owned(host: Host, change: FileChange) -> list[FileChange]:
    """``change`` of a file virtdeb owns, with its ownership marker when it creates the file.

    The marker comes first: an apply interrupted between the two must not leave a
    file virtdeb created without the marker that lets purge remove it.
    """
    if change.before is None and change.after is not None:
        return [created_marker(host, change.rule, change.target), change]
    return [change]


PURGE_UNDO_DIR = "/var/lib/virtdeb/purge-undo"


def purge_undo_marker(host: Host, change: FileChange) -> FileChange | None:
    """A marker under /var/lib/virtdeb/purge-undo/PATH: purge puts one line of PATH back.

    For an edit of another package's file that works only with something purge
    removes (libvirtd's polkit access driver needs virtdeb's polkit rules). ``change``
    must add or replace exactly one line; the marker holds the line virtdeb wrote,
    then the line it replaced, if any.  postrm (plain sh: virtdeb's Python is gone by
    then) puts the old line back if the new one is still there as written, and only
    that line: the administrator's other edits of PATH stay.  Returns None for any
    other kind of change (postrm would not know what to undo).
    """
    import difflib

    from virtdeb.effects.file import FileChange

    old = [] if change.before is None else change.before.decode("utf-8", "replace").splitlines()
    new = [] if change.after is None else change.after.decode("utf-8", "replace").splitlines()
    ops = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    if len(ops) != 1 or ops[0][4] - ops[0][3] != 1 or ops[0][2] - ops[0][1] > 1:
        return None
    tag, i1, i2, j1, _ = ops[0]
    if tag not in ("insert", "replace"):
        return None
    lines = [new[j1]] + ([old[i1]] if tag == "replace" else [])
    marker = PURGE_UNDO_DIR + change.target
    before = fsio.read_bytes(host.path(marker), marker)
    return FileChange(change.rule, marker, before, "".join(f"{ln}\n" for ln in lines).encode(),
                      mode=0o644)


# Lenses whose comments are the lines that start with "#" in column 0, and may stand
# between any two entries, and whose only values that span lines are "[...]" arrays and
# "..." strings (without escapes): libvirt's (``(record | comment | empty)*``, a comment
# being any line that starts with "#").  A read-only Editor parses such a file with its
# comment lines outside a value blanked: the same entries and values, without the work
# of parsing the comment text, most of a libvirt configuration file as installed.
BLANKABLE = frozenset({"Libvirtd.lns", "Libvirtd_qemu.lns"})


def blank_comments(text: str) -> str:
    """``text`` with each comment line that is not inside a multi-line array or string
    emptied, its newline kept (every line keeps its number)."""
    lines = text.split("\n")
    depth, quoted = 0, False
    for i, line in enumerate(lines):
        if depth == 0 and not quoted and line.startswith("#"):
            lines[i] = ""
            continue
        if '"' not in line and "[" not in line and "]" not in line:
            continue
        for char in line:
            if char == '"':
                quoted = not quoted
            elif not quoted and char in "[]":
                depth += 1 if char == "[" else -1
    return "\n".join(lines)


def was_created(host: Host, path: str) -> bool:
    """Whether virtdeb created ``path`` (and its marker is still there)."""
    return host.path(CREATED_DIR + path).is_file()


class Editor:
    """Edit one file through one lens; the result is ``change`` (or None)."""

    _serial = 0

    def __init__(self, host: Host, path: str, lens: str, *, rule: str = "",
                 foreign: bool = False, mode: int | None = None, own: bool = False,
                 comments: bool = True) -> None:
        """``comments=False``: a read-only Editor, whose tree may lack the comments (a
        lens of BLANKABLE is given the text with its comment lines blanked)."""
        self.host = host
        self.path = path
        self.lens = lens
        self.rule = rule
        self.foreign = foreign
        self.mode = mode
        self.own = own
        self.comments = comments
        self.before: bytes | None = None
        self._padded = False
        self._touched = False  # only a tree something changed is rendered again
        self.change: FileChange | None = None
        Editor._serial += 1
        self._node = f"/virtdeb{Editor._serial}"
        self.tree = f"{self._node}/tree"
        self.aug = augeas_instance()

    @property
    def exists(self) -> bool:
        return self.before is not None

    @property
    def changes(self) -> list[FileChange]:
        """The change, and for a file virtdeb owns and creates, its marker (:func:`owned`)."""
        if self.change is None:
            return []
        return owned(self.host, self.change) if self.own else [self.change]

    def __enter__(self) -> Editor:
        self.before = fsio.read_bytes(self.host.path(self.path), self.path)
        text = self._decode(self.before or b"")
        # python-augeas 0.5.0 stores "" as no value, which text_store refuses:
        # parse an empty file as one blank line and drop that line in _render.
        self._padded = text == ""
        text = "\n" if self._padded else text
        blanked = text if self.comments or self.lens not in BLANKABLE else blank_comments(text)
        try:
            self._store(blanked)
        except ParseError:
            if blanked == text:
                raise
            self._store(text)  # the file as it is: its own error, where it is
        return self

    def _store(self, text: str) -> None:
        """Parse ``text`` into the tree; a ParseError (the node cleaned up) if it fails."""
        self.aug.set(f"{self._node}/text", text)
        try:
            self.aug.text_store(self.lens, f"{self._node}/text", self.tree)
        except ValueError:
            line, col, message = _error_of(self.aug, self.tree)
            self._cleanup()
            raise ParseError(self.path, line, col,
                             f"cannot parse with {self.lens} ({message})") from None
        except BaseException:
            self._cleanup()
            raise

    def _decode(self, data: bytes) -> str:
        text = fsio.decode_utf8(data, self.path)
        if "\0" in text:
            line = text[: text.index("\0")].count("\n") + 1
            raise ParseError(self.path, line, None, "contains a NUL byte")
        return text

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None and self._touched:
                self._render()
        finally:
            self._cleanup()

    def _render(self) -> None:
        out = f"{self._node}/out"
        try:
            self.aug.text_retrieve(self.lens, f"{self._node}/text", self.tree, out)
        except ValueError:
            line, col, message = _error_of(self.aug, self.tree)
            raise ParseError(self.path, line, col,
                             f"virtdeb built a tree {self.lens} cannot write ({message})",
                             "this is a bug in virtdeb; please report it") from None
        text = _text(self.aug.get(out)) or ""
        if self._padded and text.startswith("\n"):
            text = text[1:]
        after = text.encode("utf-8")
        if after != (self.before or b""):
            from virtdeb.effects.file import FileChange

            self.change = FileChange(self.rule, self.path, self.before, after,
                                     foreign=self.foreign, mode=self.mode)

    def _cleanup(self) -> None:
        self.aug.remove(self._node)
        self.aug.remove(f"/augeas/text{self._node}")

    def _writable(self) -> None:
        if not self.comments:
            raise ValueError(f"{self.path}: a read-only Editor (comments=False) changes nothing")
        self._touched = True

    # -- the tree, addressed relative to the file --------------------------
    def _abs(self, rel: str) -> str:
        return f"{self.tree}/{rel}" if rel else self.tree

    def get(self, rel: str) -> str | None:
        """The value at REL; None for no node, a node without a value and ""."""
        return _text(self.aug.get(self._abs(rel)))

    def values(self, rel: str) -> list[str | None]:
        return [_text(self.aug.get(p)) for p in self.aug.match(self._abs(rel))]

    def last(self, key: str) -> str | None:
        """The value of the last ``key``: the one the program reading the file takes
        (libvirt, xend); None when the key is absent or has no value."""
        values = self.values(key)
        return values[-1] if values else None

    def ensure(self, key: str, value: str, *, after: str | None = None) -> None:
        """Set every occurrence of ``key`` to ``value`` (a duplicate must not undo it);
        where there is none, add it after node ``after`` if given, else at the end."""
        existing = self.match(key)
        for rel in existing:
            if self.get(rel) != value:
                self.set(rel, value)
        if existing:
            return
        if after is None:
            self.set(f"{key}[last()+1]", value)
        else:
            self.insert(after, key, before=False)
            self.set(f"{key}[last()]", value)

    def match(self, rel: str) -> list[str]:
        return [p[len(self.tree) + 1:] for p in self.aug.match(self._abs(rel))]

    def set(self, rel: str, value: str | None) -> None:
        """Set REL (created with its parents if missing) to VALUE.

        None and "" make a node without a value (``bind-interfaces``, an empty
        answer ``key =``), on python3-augeas 0.5.0 and 1.2.0 alike: 1.2.0 turns
        ``set(path, None)`` into "", which lenses refuse on write.
        """
        self._writable()
        if value:
            self.aug.set(self._abs(rel), value)
        else:
            self._set_no_value(self._abs(rel))

    def _set_no_value(self, path: str) -> None:
        """aug_set(PATH, NULL) through the API both versions share.

        ``insert`` makes a node without a value; ``move`` puts it at PATH (made
        as ``set`` makes it, or the node there, which keeps its place).  A node
        there with children keeps them: they move over first.
        """
        scratch = f"{self._node}/novalue"
        self.aug.set(f"{scratch}/anchor", "")
        self.aug.insert(f"{scratch}/anchor", "node", True)
        try:
            targets = self.aug.match(path)
            if len(targets) == 1:
                for child in self.aug.match(f"{targets[0]}/*"):
                    self.aug.move(child, f"{scratch}/node/{self.aug.label(child)}[last()+1]")
            self.aug.move(f"{scratch}/node", path)
        finally:
            self.aug.remove(scratch)

    def remove(self, rel: str) -> int:
        self._writable()
        removed: int = self.aug.remove(self._abs(rel))
        return removed

    def insert(self, rel: str, label: str, before: bool = True) -> None:
        self._writable()
        self.aug.insert(self._abs(rel), label, before)
