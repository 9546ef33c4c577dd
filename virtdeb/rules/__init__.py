"""Rules: one per section of README.Debian.

A rule's ``check()`` returns findings and never changes anything; ``plan()``
returns the changes that would fix what check found.  Rules never print and
never exit.  Every rule module registers its class in :data:`RULES` with the
:func:`register` decorator; the order of :data:`ORDER` is the order doctor shows.

A rule declares, as class attributes, the file triggers that fire it
(``triggers``, as in debian/triggers), whether the postinst runs it (``postinst``)
and its settings in virtdeb.conf (``settings``: section = the rule's name, each
with its default, its allowed values and the debconf question that asks it).
maint, config and debconf_answers read them; tests compare them with
debian/triggers and debian/templates.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

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


@dataclass(frozen=True)
class Setting:
    """One ``key = value`` of virtdeb.conf: its default, what it may be, who asks it.

    ``kind`` is ``words`` (space-separated; ``allowed`` empty: any word), ``flag``
    (yes or no) or ``choice`` (one of ``allowed``).  ``question`` names the debconf
    template that asks it (debian/templates), if one does.
    """

    default: str
    kind: Literal["words", "flag", "choice"]
    allowed: tuple[str, ...] = ()
    question: str | None = None

    def problem(self, value: str) -> str | None:
        """Why ``value`` (blanks already folded) is not valid, or None: the one validator."""
        if self.kind == "words":
            bad = [w for w in value.split() if self.allowed and w not in self.allowed]
            return (f"unknown value {bad[0]!r} (choose from {', '.join(sorted(self.allowed))})"
                    if bad else None)
        allowed = ("yes", "no") if self.kind == "flag" else self.allowed
        return None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"

    def from_debconf(self, raw: str) -> str:
        """A debconf answer as this setting's value; ValueError when it is not valid."""
        if self.kind == "flag":
            return "yes" if raw.strip() == "true" else "no"
        value = " ".join(raw.replace(",", " ").split()) if self.kind == "words" else raw.strip()
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value


def words(default: str = "", allowed: tuple[str, ...] = (),
          question: str | None = None) -> Setting:
    return Setting(default, "words", allowed, question)


def flag(default: str, question: str | None = None) -> Setting:
    return Setting(default, "flag", (), question)


def choice(default: str, allowed: tuple[str, ...], question: str | None = None) -> Setting:
    return Setting(default, "choice", allowed, question)


class Rule:
    """Base of every rule; subclasses set ``name`` and ``title`` and their declarations."""

    name: ClassVar[str]
    title: ClassVar[str]
    # Path prefixes of the file triggers (debian/triggers) that run this rule.
    triggers: ClassVar[tuple[str, ...]] = ()
    # Whether postinst configure runs it (in ORDER).
    postinst: ClassVar[bool] = True
    # Its keys in section [NAME] of virtdeb.conf.
    settings: ClassVar[dict[str, Setting]] = {}

    def __init__(self, host: Host) -> None:
        self.host = host

    def finding(self, status: Status, message: str, hint: str = "") -> Finding:
        return Finding(self.name, status, message, hint)

    def check(self) -> list[Finding]:
        raise NotImplementedError

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
