"""``virtdeb cpu-check``: compare the domains' CPU models with the host CPU, fix them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from virtdeb import report
from virtdeb.commands.options import (
    add_domain_option,
    add_host_options,
    add_json_option,
    host_from,
    locked,
    print_json,
)
from virtdeb.cpu import STRATEGIES
from virtdeb.cpu.compare import DomainReport, Progress, Verdict, inspect
from virtdeb.outcome import Outcome


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cpu-check", help="compare the domains' CPU models with the host CPU")
    add_host_options(p)
    add_domain_option(p)
    add_json_option(p, "the report")
    p.add_argument("--fix", choices=STRATEGIES,
                   help="rewrite the definitions that do not fit: disable just the missing"
                        " features, a named model the host can run, or host-model")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="with --fix: show the XML diff, define nothing")
    p.set_defaults(func=cmd_cpu_check)


def summary(reports: Sequence[DomainReport], calls: int) -> str:
    custom = [r for r in reports if r.verdict is not None]
    broken = sum(r.broken for r in custom)
    fragile = sum(bool(r.fragile) for r in custom)
    return (f"{len(custom)} of {len(reports)} domains have a custom CPU model:"
            f" {broken} incompatible with this host, {fragile} fragile;"
            f" {calls} distinct definitions compared")


def cmd_cpu_check(args: argparse.Namespace) -> int:
    host = host_from(args)
    fixed: list[tuple[str, Verdict]] = []
    outcome = Outcome("cpu-check")
    with locked(host, args, writes=bool(args.fix)):  # a fix is planned under the lock
        progress = Progress(sys.stderr, "comparing CPUs")
        try:
            reports, comparer = inspect(host.connect(), args.domain, progress)
        finally:
            progress.done()
        calls = comparer.calls  # the check's, not the fixes' comparisons
        if args.fix:
            from virtdeb.cpu.fix import plan_fixes, verify  # here: a check fixes nothing
            from virtdeb.outcome import apply

            changes = plan_fixes(reports, args.fix, comparer, host.uri)
            if not args.json:
                report.plan_text(changes, sys.stdout)
            outcome = apply(host, changes, f"cpu-check --fix {args.fix}", dry_run=args.dry_run)
            if outcome.changed:
                fixed = verify(host.connect(), changes)
    if args.json:
        print_json(outcome.as_json() | {
            "domains": [r.as_json() for r in reports], "compared": calls,
            "fixed": [{"domain": n, "compatible": v.compatible, "problem": v.problem()}
                      for n, v in fixed]})
    else:
        from virtdeb.cpu.report import text_lines

        for line in text_lines(reports):
            print(line)
        print(summary(reports, calls))
        _print_fix_result(args, reports, fixed, outcome.journal)
    still = {n for n, v in fixed if not v.compatible}
    if args.fix and not args.dry_run:
        return 1 if still else 0
    return 1 if any(r.broken for r in reports) else 0


def _print_fix_result(args: argparse.Namespace, reports: Sequence[DomainReport],
                      fixed: Sequence[tuple[str, Verdict]], entry_id: str | None) -> None:
    if not args.fix:
        if any(r.broken for r in reports):
            print("fix with: virtdeb cpu-check --fix disable-missing|model|host-model"
                  " [--dry-run]")
        return
    if args.dry_run:
        print("dry run: nothing defined")
        return
    if entry_id is None:
        print("nothing to fix")
        return
    active = {r.dom.name for r in reports if r.active}
    for name, verdict in fixed:
        later = "; running: the new definition takes effect at its next start" \
            if name in active else ""
        print(f"{name}: redefined, now {verdict.problem()}{later}")
    print(f"journal entry {entry_id}; undo with: virtdeb revert {entry_id}")
