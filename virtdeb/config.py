"""virtdeb's own configuration file, ``/etc/virtdeb/virtdeb.conf``.

It records the administrator's choices: which files of other packages virtdeb
may change, and the values the rules need.  debconf answers are written into
it by the maintainer scripts; the file stays the truth.  The format is INI::

    [virtdeb]
    allow_edit = qemu.conf bridge.conf
    [bridge]
    allow = br0

Every value is checked when the file is read; a bad one is reported with the
file and line.
"""

from __future__ import annotations

import configparser
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from virtdeb import fsio
from virtdeb.errors import ParseError, UsageError
from virtdeb.rules import Setting, flag, words

# The files of other packages virtdeb may edit only with the admin's say.
FOREIGN_FILES = {
    "qemu.conf": "/etc/libvirt/qemu.conf",
    "xend-config.sxp": "/etc/xen/xend-config.sxp",
    "bridge.conf": "/etc/qemu/bridge.conf",
    "libvirtd.conf": "/etc/libvirt/libvirtd.conf",
    "network.conf": "/etc/libvirt/network.conf",
}

# The sections that are no rule's: virtdeb's own, and the apt hook's.
OWN: dict[str, dict[str, Setting]] = {
    "virtdeb": {"allow_edit": words(allowed=tuple(FOREIGN_FILES),
                                    question="virtdeb/allow_edit")},
}
TAIL: dict[str, dict[str, Setting]] = {"apt": {"block_on_fragile": flag("no")}}


@functools.cache
def schema() -> dict[str, dict[str, Setting]]:
    """section -> key -> Setting: OWN, every rule's declared ``settings``, TAIL."""
    from virtdeb.rules import load_all

    rules = {name: dict(rule.settings) for name, rule in load_all().items() if rule.settings}
    return {**OWN, **rules, **TAIL}


_LINE_KEY = re.compile(r"^\s*([^=:\s]+)\s*[=:]")


def _line_of(text: str, section: str, key: str | None) -> int | None:
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1].strip()
            if key is None and current == section:
                return number
            continue
        match = _LINE_KEY.match(line)
        if key is not None and current == section and match and match.group(1) == key:
            return number
    return None


def check_setting(dotted: str, value: str, origin: str = "--set") -> tuple[str, str]:
    """``(section, key)`` of a valid ``section.key`` setting, or a UsageError."""
    section, _, key = dotted.partition(".")
    if key not in schema().get(section, {}):
        raise UsageError(f"{origin} {dotted}: no such setting")
    problem = schema()[section][key].problem(" ".join(value.split()))
    if problem:
        raise UsageError(f"{origin} {dotted}: {problem}")
    return section, key


@dataclass(frozen=True)
class Config:
    """The validated values: ``get(section, key)`` always answers."""

    values: Mapping[tuple[str, str], str]
    path: str = "/etc/virtdeb/virtdeb.conf"
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict)  # where each was set
    overridden: frozenset[tuple[str, str]] = frozenset()  # set by --set

    def where(self, section: str, key: str) -> str:
        """Where a value came from, for an error: ``FILE:LINE: [section] key``."""
        if (section, key) in self.overridden:
            return f"--set {section}.{key}"
        line = self.lines.get((section, key))
        at = f"{self.path}:{line}" if line is not None else self.path
        return f"{at}: [{section}] {key}"

    @classmethod
    def defaults(cls) -> Config:
        return cls({(s, k): setting.default for s, keys in schema().items()
                    for k, setting in keys.items()})

    @classmethod
    def parse(cls, text: str, path: str = "/etc/virtdeb/virtdeb.conf",
              overrides: Mapping[str, str] | None = None) -> Config:
        parser = configparser.ConfigParser(interpolation=None, strict=True,
                                           inline_comment_prefixes=None)
        parser.optionxform = str  # type: ignore[assignment]
        try:
            parser.read_string(text, source=path)
        except configparser.MissingSectionHeaderError as exc:
            raise ParseError(path, exc.lineno, None, "a [section] header must come first") from exc
        except configparser.DuplicateOptionError as exc:
            raise ParseError(path, exc.lineno, None,
                             f"{exc.option!r} is set twice in [{exc.section}]") from exc
        except configparser.DuplicateSectionError as exc:
            raise ParseError(path, exc.lineno, None,
                             f"section [{exc.section}] appears twice") from exc
        except configparser.ParsingError as exc:
            lineno = exc.errors[0][0] if exc.errors else None
            raise ParseError(path, lineno, None, "not a 'key = value' line") from exc
        values = dict(cls.defaults().values)
        lines: dict[tuple[str, str], int] = {}
        known = schema()
        for section in parser.sections():
            if section not in known:
                raise ParseError(path, _line_of(text, section, None), None,
                                 f"unknown section [{section}]"
                                 f" (known: {', '.join(known)})")
            for key, value in parser.items(section):
                if key not in known[section]:
                    raise ParseError(path, _line_of(text, section, key), None,
                                     f"unknown key {key!r} in [{section}]"
                                     f" (known: {', '.join(known[section])})")
                value = " ".join(value.split())
                line = _line_of(text, section, key)
                problem = known[section][key].problem(value)
                if problem:
                    raise ParseError(path, line, None, f"[{section}] {key}: {problem}")
                values[(section, key)] = value
                if line is not None:
                    lines[(section, key)] = line
        overridden = set()
        for dotted, value in (overrides or {}).items():
            section, key = check_setting(dotted, value)
            values[(section, key)] = " ".join(value.split())
            overridden.add((section, key))
        return cls(values, path, lines, frozenset(overridden))

    @classmethod
    def load(cls, real: Path, overrides: Mapping[str, str] | None = None,
             shown: str = "/etc/virtdeb/virtdeb.conf") -> Config:
        data = fsio.read_bytes(real, shown)
        if data is None:
            return cls.parse("", shown, overrides)
        return cls.parse(fsio.decode_utf8(data, shown), shown, overrides)

    def get(self, section: str, key: str) -> str:
        return self.values[(section, key)]

    def words(self, section: str, key: str) -> list[str]:
        return self.get(section, key).split()

    def flag(self, section: str, key: str) -> bool:
        return self.get(section, key) == "yes"

    def may_edit(self, abspath: str) -> bool:
        """Whether the admin allowed virtdeb to change this file of another package."""
        allowed = {FOREIGN_FILES[name] for name in self.words("virtdeb", "allow_edit")}
        return abspath in allowed
