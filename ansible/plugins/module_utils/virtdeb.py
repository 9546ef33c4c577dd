# Copyright: virtdeb developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""What the virtdeb modules share: the command line and how to read its result.

The modules run ``virtdeb apply --json`` and read its JSON result (schema 1, described in
virtdeb's docs/results.md): ``changed``, ``journal``, ``changes`` (each with ``kind``,
``rule``, ``target``, ``diff``), ``refused`` and, when virtdeb failed, ``error``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

SCHEMA = 1  # the result schema this module reads


class VirtdebOutputError(Exception):
    """virtdeb printed something this module does not understand."""


def missing(executable):
    """A message for a person when ``executable`` is not on the host, else None."""
    if os.path.exists(executable):
        return None
    return ("%s not found: virtdeb is not installed on this host; install the virtdeb"
            " package first (the virtdeb.libvirt_host.virtdeb role does)" % executable)


def host_args(params):
    """--root, --connect and --set options from the module's parameters."""
    argv = ["--root", params.get("root") or "/"]
    if params.get("connect"):
        argv += ["--connect", params["connect"]]
    for key, value in sorted((params.get("settings") or {}).items()):
        argv += ["--set", "%s=%s" % (key, value)]
    return argv


def apply_argv(executable, params, dry_run):
    argv = [executable, "apply", "--json"] + host_args(params)
    if dry_run:
        argv.append("--dry-run")
    return argv + ["--"] + list(params["rules"])


def parse_result(stdout):
    """The JSON result virtdeb printed, checked to be of the schema this module reads."""
    try:
        result = json.loads(stdout)
    except ValueError:
        raise VirtdebOutputError("virtdeb printed no JSON result: %r" % stdout[-500:])
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else None
        raise VirtdebOutputError("virtdeb printed a result of schema %r; this module reads"
                                 " schema %d (update the collection or virtdeb)"
                                 % (found, SCHEMA))
    return result


def summarise(result):
    """What the module returns: ``changed`` (in check mode: would change), the number of
    changes, the journal id, the diff, what was refused, and virtdeb's error if any."""
    changes = result.get("changes") or []
    would = bool(changes) if result.get("dry_run") else bool(result.get("changed"))
    out = dict(changed=would, changes=len(changes),
               diff="".join(c.get("diff", "") for c in changes),
               refused=result.get("refused") or [])
    if result.get("journal"):
        out["journal_id"] = result["journal"]
    if result.get("error"):
        out["error"] = result["error"].get("message") or "virtdeb failed"
    return out
