"""How findings and plans look to a person (and to a program, as JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from virtdeb.effects import Change
from virtdeb.rules import Finding, Status

_COLOURS = {Status.PASS: "32", Status.WARN: "33", Status.FAIL: "31", Status.NOTE: "36",
            Status.NA: "2"}


def findings_text(findings: Sequence[Finding], stream: TextIO, *, quiet: bool = False) -> None:
    """One aligned line per finding, like virt-host-validate; colour only on a tty."""
    colour = stream.isatty()
    shown = [f for f in findings if not quiet or f.status in (Status.WARN, Status.FAIL)]
    width = max((len(f.rule) + len(f.message) for f in shown), default=0) + 2
    width = min(max(width, 40), 78)
    for f in shown:
        label = f"{f.rule.upper()}: {f.message}"
        status = f.status.value
        if colour:
            status = f"\033[{_COLOURS[f.status]}m{status}\033[0m"
        line = f"{label:<{width}} : {status}"
        if f.hint and f.status is not Status.PASS:
            line += f" ({f.hint})"
        stream.write(line + "\n")


def findings_json(findings: Sequence[Finding], stream: TextIO) -> None:
    import json  # here: doctor's text output does not pay for it

    data = [{"rule": f.rule, "status": f.status.value, "message": f.message, "hint": f.hint}
            for f in findings]
    json.dump(data, stream, indent=1)
    stream.write("\n")


def plan_text(changes: Sequence[Change], stream: TextIO) -> None:
    for change in changes:
        text = change.diff()
        stream.write(text if text.endswith("\n") else text + "\n")
