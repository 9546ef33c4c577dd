"""``virtdeb debug``: libvirt's debug output (README.Debian "Debugging").

    virtdeb debug -- virsh list         run a command with LIBVIRT_DEBUG=1
    virtdeb debug --enable [FILTERS]    persistent log_filters/log_outputs in libvirtd.conf
    virtdeb debug --disable             remove them again

The command runs with ``os.execvpe`` (no shell); its exit code is virtdeb's.
The libvirtd.conf edits are journaled (``virtdeb revert`` restores the exact
bytes); running this command is the administrator's consent to edit that file.
"""

from __future__ import annotations

import argparse
import os
import sys

from virtdeb.commands.options import (
    add_host_options,
    add_json_option,
    host_from,
    locked,
    show_and_apply,
)
from virtdeb.errors import UsageError
from virtdeb.rules import debug

RESTART = ("libvirtd reads it at start: restart it (service libvirtd restart), or change"
           " the running daemon with virt-admin daemon-log-filters / daemon-log-outputs")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("debug", help="run a command with LIBVIRT_DEBUG=1, or set libvirtd's"
                       " log filters", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_host_options(p, config=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--enable", nargs="?", const=debug.DEFAULT_FILTERS, metavar="FILTERS",
                      help=f"set log_filters (default {debug.DEFAULT_FILTERS!r})")
    mode.add_argument("--disable", action="store_true",
                      help="remove log_filters and log_outputs from libvirtd.conf")
    p.add_argument("--outputs", default=debug.DEFAULT_OUTPUTS, metavar="OUTPUTS",
                   help=f"log_outputs with --enable (default {debug.DEFAULT_OUTPUTS!r})")
    p.add_argument("--dry-run", "-n", action="store_true", help="show the diff, write nothing")
    add_json_option(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                   help="the command to run with LIBVIRT_DEBUG=1")
    p.set_defaults(func=cmd_debug)


def run_with_debug(command: list[str]) -> int:
    """Replace this process by ``command`` with LIBVIRT_DEBUG=1; 127 if it is not found."""
    env = dict(os.environ, LIBVIRT_DEBUG="1")
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 - no shell, on purpose
    except OSError as exc:
        print(f"virtdeb: debug: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # not reached


def cmd_debug(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    editing = args.enable is not None or args.disable
    if editing and command:
        raise UsageError("debug: give either --enable/--disable or -- COMMAND, not both")
    if not editing:
        if not command:
            raise UsageError("debug: nothing to do: give -- COMMAND, --enable or --disable")
        return run_with_debug(command)
    host = host_from(args)
    filters = outputs = None
    if not args.disable:
        filters = debug.checked(args.enable, debug.FILTER, "--enable")
        outputs = debug.checked(args.outputs, debug.OUTPUT, "--outputs")
    with locked(host, args):
        changes = debug.logging_changes(host, filters, outputs)
        outcome = show_and_apply(host, changes,
                                 "debug " + ("--disable" if args.disable else "--enable"),
                                 dry_run=args.dry_run, unchanged=f"{debug.CONF} already says so",
                                 as_json=args.json)
    if outcome.changed and not args.json:
        print(RESTART)
    return 0
