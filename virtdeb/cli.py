"""The ``virtdeb`` command: thin argparse over the rules, the journal and the report.

Exit codes: 0 all well; 1 a check FAILed or an operation failed; 2 usage or
input error (a malformed file, an unknown rule); 75 busy: another virtdeb held
the lock for longer than ``--wait`` (nothing was changed).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from virtdeb import __version__, report
from virtdeb.commands.options import (
    add_host_options,
    add_json_option,
    host_from,
    locked,
    print_json,
    show_and_apply,
)
from virtdeb.errors import VirtdebError
from virtdeb.rules import ORDER, Status, select

log = logging.getLogger("virtdeb")

# Modules that add subcommands: each has add_parser(subparsers) -> None and sets
# the parser's ``func`` default to a handler (args) -> int.
EXTRA_COMMANDS: list[str] = ["virtdeb.commands.acl", "virtdeb.commands.debug",
                             "virtdeb.commands.cpu_check", "virtdeb.commands.cpu_baseline"]
# The subcommands defined here.  A run imports only the module of its own subcommand
# (``cpu-check``: virtdeb.commands.cpu_check), none for these: start-up time that doctor,
# run by scripts, and cpu-check on a thousand domains should not pay.
OWN_COMMANDS = ("doctor", "apply", "revert")

Handler = Callable[[argparse.Namespace], int]


def cmd_doctor(args: argparse.Namespace) -> int:
    host = host_from(args)
    rules = [rule(host) for rule in select(args.rules)]
    for rule in rules:  # the commands the checks run, started now: they run meanwhile
        for argv in rule.commands():
            host.start(argv)
    findings = []
    try:
        for rule in rules:
            findings.extend(rule.check())
    finally:
        host.close()
    if args.json:
        report.findings_json(findings, sys.stdout)
    else:
        report.findings_text(findings, sys.stdout, quiet=args.quiet)
    return 1 if any(f.status is Status.FAIL for f in findings) else 0


def cmd_apply(args: argparse.Namespace) -> int:
    host = host_from(args)
    rules = select(args.rules)
    names = " ".join(r.name for r in rules)
    with locked(host, args):  # plan from the bytes on disk once no other virtdeb writes
        changes = [c for rule in rules for c in rule(host).plan()]
        show_and_apply(host, changes, f"apply {names}", dry_run=args.dry_run,
                       unchanged=f"the host already matches ({names})", as_json=args.json)
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from virtdeb.journal import Journal
    from virtdeb.outcome import SCHEMA, Outcome

    host = host_from(args)
    journal = Journal(host)
    if args.list:
        entries = journal.entries()
        if args.json:
            print_json({"schema": SCHEMA, "entries": [
                {"id": e.id, "status": e.status, "command": e.command, "targets": e.targets()}
                for e in entries]})
            return 0
        if not entries:
            print("the journal is empty")
        for e in entries:
            print(f"{e.id}  {e.status:<8}  {e.command}: {', '.join(e.targets())}")
        return 0
    with locked(host, args, recover=False):
        entry, messages = journal.revert(args.id, connect=args.connect)
    if args.json:
        outcome = Outcome.of_revert(entry.id, f"revert {entry.id}", entry.records, messages)
        print_json(outcome.as_json())
        return 0
    for message in messages:
        print(message)
    print(f"reverted journal entry {entry.id} ({entry.command})")
    return 0


def build_parser(extra: Sequence[str] = EXTRA_COMMANDS) -> argparse.ArgumentParser:
    """The parser, with the subcommands of the ``extra`` modules (of EXTRA_COMMANDS)."""
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
    add_json_option(p)
    p.add_argument("rules", nargs="+", metavar="RULE", help=rules_help)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("revert", help="undo the last apply, or the one named by ID;"
                       " libvirt changes on the URI they were made on (unless --connect)")
    add_host_options(p, config=False)
    p.add_argument("--list", action="store_true", help="list the journal")
    add_json_option(p)
    p.add_argument("id", nargs="?", metavar="ID", help="journal entry (see --list)")
    p.set_defaults(func=cmd_revert)

    for module in extra:
        importlib.import_module(module).add_parser(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names: its first word that is not an option.

    (virtdeb's own options, before the subcommand, take no value.)
    """
    return next((a for a in argv if not a.startswith("-")), None)


def _modules_for(command: str | None) -> list[str]:
    """The modules of EXTRA_COMMANDS a run of ``command`` needs: none for the commands
    defined here, the command's own, or all of them (--help, an unknown command)."""
    if command in OWN_COMMANDS:
        return []
    own = f"virtdeb.commands.{(command or '').replace('-', '_')}"
    return [own] if own in EXTRA_COMMANDS else EXTRA_COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_modules_for(_command(argv)))
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
        if getattr(args, "result_json", False) and args.json:  # say it to the program too
            from virtdeb.outcome import Outcome  # here: doctor does not need it

            print_json(Outcome(" ".join(argv)).as_json()
                       | {"error": {"name": exc.name, "message": exc.message}})
        print(f"virtdeb: {exc.label}: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("virtdeb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
