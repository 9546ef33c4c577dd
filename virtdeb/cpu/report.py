"""``virtdeb cpu-check``'s text report: one line per CPU definition, not per domain.

Forty guests cloned from one template share one CPU definition, and the check compares
that definition once: the report says so once too, with the domains' names counted and
abbreviated past a few. ``--json`` stays per domain (that is for programs).

A group is the domains whose custom CPU definitions are the same after normalisation
(attribute order, whitespace, feature order: ``DomainCPU.key``) and that got the same
verdict and the same fragility. Incompatible definitions come first, then by the first
domain's name. A group of one reads as before::

    tsx (shut off, EPYC-Genoa (AMD)): INCOMPATIBLE: missing features: hle, rtm

and a bigger one::

    web01, web02, web03, web04 and 36 more (40 domains, 2 running, EPYC-Genoa (AMD)):
    INCOMPATIBLE: missing features: hle, rtm [fragile: fallback=forbid, match=exact]

(on one line). Only the standard library; the reports are duck-typed, so this module
imports nothing of the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

SHOWN = 4  # names shown before "and N more"


class _Report(Protocol):
    dom: Any
    active: bool
    verdict: Any
    fragile: list[str]

    @property
    def broken(self) -> bool: ...

    def line(self) -> str: ...


def groups(reports: Sequence[_Report]) -> list[list[_Report]]:
    """The compared reports grouped by (definition, verdict, fragility), in report order."""
    out: dict[tuple[str, str, tuple[str, ...]], list[_Report]] = {}
    for r in reports:
        if r.verdict is None:
            continue  # not a custom CPU: nothing was compared
        key = (r.dom.key(r.dom.cpu)[0], r.verdict.problem(), tuple(r.fragile))
        out.setdefault(key, []).append(r)
    found = list(out.values())
    found.sort(key=lambda g: (not g[0].broken, g[0].dom.name))
    return found


def abbreviate(all_names: Sequence[str], shown: int = SHOWN) -> str:
    """``a, b, c, d and 36 more``: every name up to SHOWN + 1, else SHOWN and a count."""
    if len(all_names) <= shown + 1:
        return ", ".join(all_names)
    return f"{', '.join(all_names[:shown])} and {len(all_names) - shown} more"


def names(members: Sequence[_Report], shown: int = SHOWN) -> str:
    """The members' domain names, abbreviated (:func:`abbreviate`)."""
    return abbreviate([r.dom.name for r in members], shown)


def group_line(members: Sequence[_Report], shown: int = SHOWN) -> str:
    """One line for a group (the old per-domain line for a group of one)."""
    first = members[0]
    if len(members) == 1:
        return first.line()
    running = sum(r.active for r in members)
    state = ("running" if running == len(members) else "shut off" if not running
             else f"{running} running")
    what = first.dom.model + (f" ({first.dom.vendor})" if first.dom.vendor else "")
    text = "INCOMPATIBLE: " + first.verdict.problem() if first.broken else "compatible"
    if first.fragile:
        text += f" [fragile: {', '.join(first.fragile)}]"
    return f"{names(members, shown)} ({len(members)} domains, {state}, {what}): {text}"


def text_lines(reports: Sequence[_Report], shown: int = SHOWN) -> list[str]:
    """The report's lines: one per CPU definition."""
    return [group_line(g, shown) for g in groups(reports)]
