"""The ``virtdeb`` command: thin argparse over the rules, the journal and the report.

Exit codes: 0 all well; 1 a check FAILed or an operation failed; 2 usage or
input error (a malformed file, an unknown rule); 75 busy: another virtdeb held
the lock for longer than ``--wait`` (nothing was changed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from virtdeb import __version__, report
from virtdeb.changes import Change
from virtdeb.errors import UsageError, VirtdebError
from virtdeb.host import DEFAULT_URI, Host
from virtdeb.rules import ORDER, Status, select

if TYPE_CHECKING:
    from virtdeb.journal import Entry

log = logging.getLogger("virtdeb")

# Modules that add subcommands: each has add_parser(subparsers) -> None and sets
# the parser's ``func`` default to a handler (args) -> int.
EXTRA_COMMANDS: list[str] = ["virtdeb.acl", "virtdeb.debugcmd", "virtdeb.cpucheck"]
# The subcommands defined here; for these the modules above are not imported
# (they cost start-up time that doctor, run by scripts, should not pay).
OWN_COMMANDS = ("doctor", "apply", "revert")

Handler = Callable[[argparse.Namespace], int]


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
        parser.add_argument("--wait", type=float, metavar="SECONDS",
                            help="wait this long for another virtdeb to finish (default"
                                 " $VIRTDEB_LOCK_WAIT or 10), then exit 75 'busy'")


def locked(host: Host, args: argparse.Namespace, *, writes: bool = True,
           recover: bool = True) -> contextlib.AbstractContextManager[None]:
    """virtdeb's lock around a plan and its apply; nothing when ``writes`` is false.

    ``recover``: first undo what an interrupted apply left (not for revert).
    """
    if not writes or getattr(args, "dry_run", False):
        return contextlib.nullcontext()
    from virtdeb.journal import Journal

    return Journal(host).locked(wait=getattr(args, "wait", None), recover=recover)


def cmd_doctor(args: argparse.Namespace) -> int:
    host = host_from(args)
    findings = []
    for rule in select(args.rules):
        findings.extend(rule(host).check())
    if args.json:
        report.findings_json(findings, sys.stdout)
    else:
        report.findings_text(findings, sys.stdout, quiet=args.quiet)
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


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


def cmd_apply(args: argparse.Namespace) -> int:
    host = host_from(args)
    rules = select(args.rules)
    names = " ".join(r.name for r in rules)
    with locked(host, args):  # plan from the bytes on disk once no other virtdeb writes
        changes = [c for rule in rules for c in rule(host).plan()]
        show_and_apply(host, changes, f"apply {names}", dry_run=args.dry_run,
                       unchanged=f"the host already matches ({names})")
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from virtdeb.journal import Journal

    host = host_from(args)
    journal = Journal(host)
    if args.list:
        entries = journal.entries()
        if not entries:
            print("the journal is empty")
        for e in entries:
            print(f"{e.id}  {e.status:<8}  {e.command}: {', '.join(e.targets())}")
        return 0
    with locked(host, args, recover=False):
        entry, messages = journal.revert(args.id, connect=args.connect)
    for message in messages:
        print(message)
    print(f"reverted journal entry {entry.id} ({entry.command})")
    return 0


def build_parser(*, extra: bool = True) -> argparse.ArgumentParser:
    """The parser; ``extra=False`` leaves out the subcommands of EXTRA_COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="virtdeb", description="Set up a libvirt host the way README.Debian asks.")
    parser.add_argument("--version", action="version", version=f"virtdeb {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    rules_help = f"rules to run (default all: {', '.join(ORDER)})"

    p = sub.add_parser("doctor", help="check the host, change nothing")
    add_host_options(p, writes=False)
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="show only WARN and FAIL")
    p.add_argument("rules", nargs="*", metavar="RULE", help=rules_help)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("apply", help="make the changes the rules plan (journaled)")
    add_host_options(p)
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="show the changes as a diff, write nothing")
    p.add_argument("rules", nargs="+", metavar="RULE", help=rules_help)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("revert", help="undo the last apply, or the one named by ID;"
                       " libvirt changes on the URI they were made on (unless --connect)")
    add_host_options(p, config=False)
    p.add_argument("--list", action="store_true", help="list the journal")
    p.add_argument("id", nargs="?", metavar="ID", help="journal entry (see --list)")
    p.set_defaults(func=cmd_revert)

    for module in EXTRA_COMMANDS if extra else ():
        importlib.import_module(module).add_parser(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option.

    (virtdeb's own options, before the subcommand, take no value.)
    """
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(extra=_command(argv) not in OWN_COMMANDS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for usage
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="virtdeb: %(message)s")
    func: Handler = args.func
    try:
        return func(args)
    except VirtdebError as exc:
        print(f"virtdeb: {exc.label}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("virtdeb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
