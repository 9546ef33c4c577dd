"""``virtdeb cpu-baseline [--json] [--save] [--domain NAME]... [--timeout S] URI...``

The CPU every host of a fleet can give, and which guests can move where
(engine: :mod:`virtdeb.cpu.baseline`).  Without a URI: this host's
qemu:///system.  Exit 0 when every host answered, the baseline was computed
and every host accepts it, and nothing was lost since a saved baseline; 1
otherwise; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from virtdeb.commands.options import (
    add_domain_option,
    add_json_option,
    add_wait_option,
    locked,
    print_json,
)
from virtdeb.cpu import baseline, drift
from virtdeb.cpu.state import FLEET_STATE
from virtdeb.errors import UsageError
from virtdeb.host import DEFAULT_URI, Host
from virtdeb.outcome import Outcome, apply


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cpu-baseline", help="the CPU every host can give; which guests can"
                       " move where", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("uris", nargs="*", metavar="URI",
                   help=f"libvirt URIs of the hosts (default {DEFAULT_URI})")
    add_json_option(p, "the result (the baseline as <cpu> XML)")
    p.add_argument("--save", action="store_true",
                   help=f"record the result in {FLEET_STATE}; later runs say what"
                        " changed")
    add_domain_option(p)
    p.add_argument("--timeout", type=float, default=baseline.DEFAULT_TIMEOUT, metavar="S",
                   help="seconds to wait for a host, in each of the two rounds of questions"
                        f" (default {baseline.DEFAULT_TIMEOUT:g})")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="the saved baseline lives under DIR (default /)")
    add_wait_option(p, "with --save: ")
    p.set_defaults(func=cmd_cpu_baseline)


def cmd_cpu_baseline(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: expected a positive number of seconds")
    local = Host(root=Path(args.root))
    saved = drift.load_saved(local)
    fleet = baseline.survey(args.uris or [DEFAULT_URI], args.domain, args.timeout)
    try:
        result = fleet.as_json()
    finally:
        baseline.close(fleet)
    changes = [] if saved is None else drift.drift(saved, result)
    if saved is not None:
        result["since_saved"] = {"time": saved.get("time"),
                                 "changes": [{"text": c.text, "loss": c.loss} for c in changes]}
    outcome = Outcome("cpu-baseline")
    if args.save:
        with locked(local, args):  # the saved file is read under the lock
            outcome = apply(local, drift.save_changes(local, carry_over(saved, result)),
                            "cpu-baseline --save")
        result["saved_to"] = FLEET_STATE
    if args.json:
        print_json(outcome.as_json() | result)
    else:
        sys.stdout.write(drift.render(result, changes,
                                         None if saved is None else str(saved.get("time"))))
        if args.save:
            entry = outcome.journal
            print(f"saved to {FLEET_STATE}" + (f" (journal entry {entry}; undo with:"
                  f" virtdeb revert {entry})" if entry else " (unchanged)"))
    base = result["baseline"]
    bad = (any(not h["ok"] for h in result["hosts"]) or base["cpu_xml"] is None
           or bool(base["refused_by"]) or any(c.loss for c in changes))
    return 1 if bad else 0


def carry_over(saved: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """What --save records: a host that did not answer keeps its saved entry (the next
    run still compares it with what it said then)."""
    before = {h["uri"]: h for h in (saved or {}).get("hosts", []) if h.get("ok")}
    hosts = []
    for h in result["hosts"]:
        if not h["ok"] and h["uri"] in before:
            assert saved is not None
            old = before[h["uri"]]
            h = {**old, "label": h["label"],
                 "carried_from": old.get("carried_from") or saved.get("time")}
        hosts.append(h)
    return {**result, "hosts": hosts}
