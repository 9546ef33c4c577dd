"""Rules: one per section of README.Debian.

A rule's ``check()`` returns findings and never changes anything; ``plan()``
returns the changes that would fix what check found.  Rules never print and
never exit.  Every rule module registers its class in :data:`RULES` with the
:func:`register` decorator; the order of :data:`ORDER` is the order doctor shows.

A rule declares, as class attributes, the file triggers that fire it
(``triggers``, as in debian/triggers) and whether the postinst runs it
(``postinst``).  Its settings in virtdeb.conf (section = the rule's name) are in
:mod:`virtdeb.settings`, with every other key of that file.  maint reads the
declarations; tests compare them with debian/triggers and debian/templates.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.host import Host

# The order doctor shows the rules in; each is a module of this package.
ORDER = ["xend", "debug", "network", "guestnet", "dnsmasq", "bridge", "access", "qemu", "ssh",
         "cpu"]


class Status(enum.Enum):
    PASS = "PASS"  # noqa: S105 - a status, not a password
    WARN = "WARN"
    FAIL = "FAIL"
    NOTE = "NOTE"
    NA = "N/A"


@dataclass(frozen=True)
class Finding:
    rule: str
    status: Status
    message: str
    hint: str = ""


class Rule:
    """Base of every rule; subclasses set ``name`` and ``title`` and their declarations."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Path prefixes of the file triggers (debian/triggers) that run this rule.
    triggers: ClassVar[tuple[str, ...]] = ()
    # Whether postinst configure runs it (in ORDER).
    postinst: ClassVar[bool] = True

    def __init__(self, host: Host) -> None:
        self.host = host

    def finding(self, status: Status, message: str, hint: str = "") -> Finding:
        return Finding(self.name, status, message, hint)

    def check(self) -> list[Finding]:
        raise NotImplementedError

    def commands(self) -> list[list[str]]:
        """The read-only commands check() will run on this host, for doctor to start
        them (Host.start) before it runs the checks; never raises (check() does)."""
        return []

    def plan(self) -> list[Change]:
        return []


R = TypeVar("R", bound=type[Rule])
RULES: dict[str, type[Rule]] = {}


def register(cls: R) -> R:
    RULES[cls.name] = cls
    return cls


def _load(name: str) -> type[Rule] | None:
    """Import rule module ``name`` (if it exists); its registered rule, or None."""
    try:
        importlib.import_module(f"virtdeb.rules.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"virtdeb.rules.{name}":
            raise
    return RULES.get(name)


def load_all() -> dict[str, type[Rule]]:
    """Import every rule module that exists; return the registry in ORDER."""
    loaded = {n: _load(n) for n in ORDER}
    return {n: rule for n, rule in loaded.items() if rule is not None}


def select(names: Iterable[str]) -> list[type[Rule]]:
    """The rules named (all when none), or a UsageError naming the unknown one.

    Only the named rules' modules are imported: a rule's imports cost start-up time.
    """
    names = list(names)
    if not names:
        return list(load_all().values())
    rules = []
    for name in names:
        rule = _load(name) if name in ORDER else None
        if rule is None:
            raise UsageError(f"unknown rule {name!r}; known rules: {', '.join(load_all())}")
        rules.append(rule)
    return rules
