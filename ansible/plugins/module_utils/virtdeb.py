# Copyright: virtdeb developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""What the virtdeb modules share: the command line and how to read its output.

virtdeb's own words are the interface: ``virtdeb apply`` prints its plan (unified diffs)
and then exactly one of three closing lines (virtdeb/cli.py, show_and_apply):

- ``nothing to change: ...``                          nothing was planned
- ``dry run: N change(s) shown, nothing written``      --dry-run with a plan
- ``applied N change(s) as journal entry ID; ...``     the plan was made
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

NOTHING = "nothing to change:"
_DRY_RUN = re.compile(r"^dry run: (\d+) change\(s\) shown, nothing written$")
_APPLIED = re.compile(r"^applied (\d+) change\(s\) as journal entry (\S+?);")


class VirtdebOutputError(Exception):
    """virtdeb printed something this module does not understand."""


def host_args(params):
    """--root, --connect and --set options from the module's parameters."""
    argv = ["--root", params.get("root") or "/"]
    if params.get("connect"):
        argv += ["--connect", params["connect"]]
    for key, value in sorted((params.get("settings") or {}).items()):
        argv += ["--set", "%s=%s" % (key, value)]
    return argv


def apply_argv(executable, params, dry_run):
    argv = [executable, "apply"] + host_args(params)
    if dry_run:
        argv.append("--dry-run")
    return argv + ["--"] + list(params["rules"])


def parse_apply(stdout):
    """(changes, journal_id, diff) from the output of ``virtdeb apply [--dry-run]``."""
    lines = stdout.splitlines(True)
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].rstrip("\n")
        if line.startswith(NOTHING):
            return 0, None, ""
        m = _DRY_RUN.match(line)
        if m:
            return int(m.group(1)), None, "".join(lines[:i])
        m = _APPLIED.match(line)
        if m:
            return int(m.group(1)), m.group(2), "".join(lines[:i])
    raise VirtdebOutputError("virtdeb apply printed none of its closing lines: %r"
                             % stdout[-500:])
