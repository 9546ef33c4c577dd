"""What every subcommand shares: the host options, the Host they give, and the one way
to show and make a plan.  cli.py and the modules of this package import it (never cli)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from virtdeb import report
from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.host import DEFAULT_URI, Host

if TYPE_CHECKING:
    from virtdeb.journal import Entry


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


def show_and_apply(host: Host, changes: Sequence[Change], command: str, *, dry_run: bool,
                   unchanged: str) -> Entry | None:
    """Print the plan; unless ``dry_run``, journal and make it and say how to undo it.

    The one way every subcommand makes changes.  ``unchanged`` is printed when
    there is nothing to do.
    """
    from virtdeb.journal import Journal  # here: doctor does not need it

    if not changes:
        print(f"nothing to change: {unchanged}")
        return None
    report.plan_text(changes, sys.stdout)
    if dry_run:
        print(f"dry run: {len(changes)} change(s) shown, nothing written")
        return None
    entry = Journal(host).apply(changes, command)
    assert entry is not None
    print(f"applied {len(changes)} change(s) as journal entry {entry.id};"
          f" undo with: virtdeb revert {entry.id}")
    return entry
