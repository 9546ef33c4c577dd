"""What every subcommand shares: the host options, the Host they give, and how a plan is
made (:func:`virtdeb.outcome.apply`) and shown.  cli.py and the modules of this package
import it (never cli)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtdeb import report
from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.host import DEFAULT_URI, Host

if TYPE_CHECKING:  # imported where used: doctor applies nothing
    from virtdeb.outcome import Outcome


def host_from(args: argparse.Namespace) -> Host:
    overrides = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item}: expected SECTION.KEY=VALUE")
        overrides[key] = value
    return Host(root=Path(args.root), uri=args.connect or DEFAULT_URI, overrides=overrides)


def add_host_options(parser: argparse.ArgumentParser, *, config: bool = True,
                     writes: bool = True) -> None:
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="act on the system installed under DIR (default /)")
    parser.add_argument("--connect", "-c", metavar="URI",
                        help=f"libvirt connection URI (default {DEFAULT_URI})")
    if config:
        parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                            help="override a virtdeb.conf value for this run")
    if writes:
        add_wait_option(parser)


def add_wait_option(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--wait SECONDS`` for virtdeb's lock; ``when``: e.g. "with --save: "."""
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help=f"{when}wait this long for another virtdeb to finish (default"
                             " $VIRTDEB_LOCK_WAIT or 10), then exit 75 'busy'")


def add_domain_option(parser: argparse.ArgumentParser) -> None:
    """``--domain NAME``, once per domain: one value each, so URIs after it stay URIs."""
    parser.add_argument("--domain", action="append", metavar="NAME", default=[],
                        help="only this domain; repeat for more (default: every defined"
                             " domain)")


def locked(host: Host, args: argparse.Namespace, *, writes: bool = True,
           recover: bool = True) -> contextlib.AbstractContextManager[None]:
    """virtdeb's lock around a plan and its apply; nothing when ``writes`` is false.

    ``recover``: first undo what an interrupted apply left (not for revert).
    """
    if not writes or getattr(args, "dry_run", False):
        return contextlib.nullcontext()
    from virtdeb.journal import Journal  # here: doctor does not need it

    return Journal(host).locked(wait=getattr(args, "wait", None), recover=recover)


def add_json_option(parser: argparse.ArgumentParser,
                    what: str = "what was changed") -> None:
    """``--json`` of a command that changes something: the result (docs/results.md) on
    stdout instead of the text, also when it fails (with ``error``)."""
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as JSON (docs/results.md), not as text")
    parser.set_defaults(result_json=True)


def show_and_apply(host: Host, changes: Sequence[Change], command: str, *, dry_run: bool,
                   unchanged: str, as_json: bool = False) -> Outcome:
    """Apply the plan (:func:`virtdeb.outcome.apply`) unless ``dry_run``, and show it:
    the diffs and how to undo it, or (``as_json``) the JSON result.

    ``unchanged`` is printed when there is nothing to do.
    """
    from virtdeb.outcome import apply

    outcome = apply(host, changes, command, dry_run=dry_run)
    if as_json:
        print_json(outcome.as_json())
    else:
        print_outcome(outcome, unchanged)
    return outcome


def print_json(data: Mapping[str, Any]) -> None:
    import json  # here: the text output does not pay for it

    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def print_outcome(outcome: Outcome, unchanged: str) -> None:
    if not outcome.changes:
        print(f"nothing to change: {unchanged}")
        return
    report.plan_text(outcome.changes, sys.stdout)
    if outcome.dry_run:
        print(f"dry run: {len(outcome.changes)} change(s) shown, nothing written")
        return
    print(f"applied {len(outcome.changes)} change(s) as journal entry {outcome.journal};"
          f" undo with: virtdeb revert {outcome.journal}")
