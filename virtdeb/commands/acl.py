"""``virtdeb acl``: finer-grained libvirt access than the ``libvirt`` group.

    virtdeb acl grant USER --read-only        USER may look, not touch
    virtdeb acl grant USER --domain NAME...   USER may manage these domains only
    virtdeb acl revoke USER
    virtdeb acl show

virtdeb writes a polkit rules file it owns, /etc/polkit-1/rules.d/50-virtdeb.rules,
for libvirt's polkit access driver (libvirt's "acl-polkit" docs: actions
``org.libvirt.api.OBJECT.PERMISSION`` with details such as ``domain_name``).
libvirtd asks polkit per API call only with ``access_drivers = [ "polkit" ]``
in /etc/libvirt/libvirtd.conf: virtdeb sets that only with consent
(``--set virtdeb.allow_edit=libvirtd.conf`` or ``allow_edit`` in
/etc/virtdeb/virtdeb.conf), else it says what to do.  With the access driver
on, members of the ``libvirt`` group without a grant keep all of libvirt's
API (README.Debian), through the same rules file.

The grants are kept in the rules file itself, as one JSON literal (JSON is
JavaScript; every user and domain name reaches the file only through
``json.dumps``).  Every change is journaled: ``virtdeb revert`` undoes it.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from virtdeb import fsio
from virtdeb.commands.options import (
    add_host_options,
    add_json_option,
    host_from,
    locked,
    show_and_apply,
)
from virtdeb.edit import Editor, owned, purge_undo_marker
from virtdeb.effects import Change
from virtdeb.effects.file import FileChange
from virtdeb.errors import ParseError, UsageError
from virtdeb.host import Host
from virtdeb.rules.access import checked_users
from virtdeb.system import groups

# 50-: before libvirt's own /usr/share/polkit-1/rules.d/60-libvirt.rules, so that a
# grant decides for its user (a read-only user gets no read-write connection even in
# group libvirt); users without a grant fall through to libvirt's rules.
RULES_FILE = "/etc/polkit-1/rules.d/50-virtdeb.rules"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
GRANTS_LINE = re.compile(r"^    var grants = (.*);$", re.MULTILINE)
MAX_DOMAIN_NAME = 1024

Grant = dict[str, Any]  # {"user": str, "read_only": True} or {"user": str, "domains": [..]}

TEMPLATE = """\
// virtdeb: finer-grained access to libvirt (README.Debian "Access Control").
// Written by "virtdeb acl"; change it with virtdeb acl grant/revoke, not by hand.
// libvirtd asks these only with access_drivers = [ "polkit" ] in libvirtd.conf.
polkit.addRule(function(action, subject) {
    var grants = @GRANTS@;
    var id = action.id;
    if (id.indexOf("org.libvirt.") !== 0) {
        return polkit.Result.NOT_HANDLED;
    }
    var grant = null;
    for (var i = 0; i < grants.length; i++) {
        if (grants[i].user === subject.user) {
            grant = grants[i];
        }
    }
    var api = "org.libvirt.api.";
    if (grant === null) {
        // The libvirt group keeps all of libvirt's API, as without ACLs.
        if (id.indexOf(api) === 0 && subject.isInGroup("libvirt")) {
            return polkit.Result.YES;
        }
        return polkit.Result.NOT_HANDLED;
    }
    if (id === "org.libvirt.unix.monitor") {
        return polkit.Result.YES;
    }
    if (id === "org.libvirt.unix.manage") {
        return grant.domains ? polkit.Result.YES : polkit.Result.NO;
    }
    if (id.indexOf(api) !== 0) {
        return polkit.Result.NO;
    }
    var dot = id.lastIndexOf(".");
    var object = id.substring(api.length, dot);
    var perm = id.substring(dot + 1);
    var looking = perm === "getattr" || perm === "read" || perm.indexOf("search-") === 0;
    if (grant.read_only) {
        return looking ? polkit.Result.YES : polkit.Result.NO;
    }
    if (object === "connect") {
        return (perm === "getattr" || perm === "read" || perm === "search-domains")
            ? polkit.Result.YES : polkit.Result.NO;
    }
    if (object === "domain" && grant.domains.indexOf(action.lookup("domain_name")) >= 0) {
        return polkit.Result.YES;
    }
    return polkit.Result.NO;
});
"""


def render(grants: list[Grant]) -> bytes:
    """The rules file for ``grants`` (sorted by user; names only through json.dumps)."""
    ordered = sorted(grants, key=lambda g: str(g["user"]))
    literal = json.dumps(ordered, sort_keys=True, ensure_ascii=True)
    # JSON is JavaScript except for U+2028/2029, which ensure_ascii escapes.
    return TEMPLATE.replace("@GRANTS@", literal).encode("ascii")


def parse(data: bytes) -> list[Grant]:
    """The grants in a rules file virtdeb wrote; ParseError for anything else."""
    text = data.decode("utf-8", "replace")
    match = GRANTS_LINE.search(text)
    try:
        if match is None:
            raise ValueError("no 'var grants = ...;' line")
        grants = json.loads(match.group(1))
        if not isinstance(grants, list) or not all(isinstance(g, dict) and "user" in g
                                                   for g in grants):
            raise ValueError("grants is not a list of {user: ...}")
    except ValueError as exc:
        line = text[: match.start()].count("\n") + 1 if match else None
        raise ParseError(RULES_FILE, line, None, f"not a rules file of virtdeb acl ({exc})",
                         "move it away (virtdeb acl then starts a new one)") from exc
    return grants


def read_grants(host: Host) -> tuple[bytes | None, list[Grant]]:
    before = fsio.read_bytes(host.path(RULES_FILE), RULES_FILE)
    return before, ([] if before is None else parse(before))


def domain_name_problem(name: str) -> str | None:
    if not name:
        return "an empty domain name"
    if len(name.encode("utf-8")) > MAX_DOMAIN_NAME:
        return f"longer than {MAX_DOMAIN_NAME} bytes"
    if "/" in name or not name.isprintable():
        return "libvirt domain names have no '/' and no control characters"
    return None


def rules_changes(host: Host, before: bytes | None, grants: list[Grant]) -> list[Change]:
    after = render(grants)
    if after == before:
        return []
    return list(owned(host, FileChange("acl", RULES_FILE, before, after, mode=0o644)))


def access_driver_changes(host: Host) -> list[Change]:
    """``access_drivers = [ "polkit" ]`` in libvirtd.conf (a foreign file)."""
    if not host.path(LIBVIRTD_CONF).exists():
        return []
    with Editor(host, LIBVIRTD_CONF, "Libvirtd.lns", rule="acl", foreign=True) as ed:
        drivers = ed.match("access_drivers")
        if not drivers:
            ed.set("access_drivers/1", "polkit")
        elif "polkit" not in ed.values(f"{drivers[-1]}/*"):
            count = len(ed.match(f"{drivers[-1]}/*"))
            ed.set(f"{drivers[-1]}/{count + 1}", "polkit")
    changes: list[Change] = []
    for change in ed.changes:
        # purge removes the rules file that keeps the libvirt group in: it puts the
        # line back too (debian/postrm), the marker first as with owned()
        marker = purge_undo_marker(host, change)
        changes += [marker, change] if marker else [change]
    return changes


def polkit_driver_on(host: Host) -> bool | None:
    if not host.path(LIBVIRTD_CONF).exists():
        return None
    with Editor(host, LIBVIRTD_CONF, "Libvirtd.lns") as ed:
        drivers = ed.match("access_drivers")
        return bool(drivers) and "polkit" in ed.values(f"{drivers[-1]}/*")


# -- the command -----------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("acl", help="per-user libvirt access through polkit",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    acts = p.add_subparsers(dest="acl_command", metavar="ACTION", required=True)
    g = acts.add_parser("grant", help="give USER read-only access or some domains")
    add_host_options(g)
    g.add_argument("user", metavar="USER")
    kind = g.add_mutually_exclusive_group(required=True)
    kind.add_argument("--read-only", action="store_true", help="look at everything, change nothing")
    kind.add_argument("--domain", nargs="+", metavar="NAME", help="manage these domains only")
    g.add_argument("--dry-run", "-n", action="store_true", help="show the diff, write nothing")
    add_json_option(g)
    r = acts.add_parser("revoke", help="remove USER's grant")
    add_host_options(r)
    r.add_argument("user", metavar="USER")
    r.add_argument("--dry-run", "-n", action="store_true", help="show the diff, write nothing")
    add_json_option(r)
    s = acts.add_parser("show", help="list the grants")
    add_host_options(s, writes=False)
    p.set_defaults(func=cmd_acl)


def _checked_user(host: Host, user: str) -> str:
    return checked_users(groups.passwd_users(host), [user], groups.name_regex(host),
                         "acl")[0]


def granted(grants: list[Grant], user: str, read_only: bool,
            domains: list[str] | None) -> list[Grant]:
    """``grants`` with USER's grant set: read-only, or more domains (kept in order)."""
    others = [g for g in grants if g["user"] != user]
    if read_only:
        return others + [{"user": user, "read_only": True}]
    old: Grant = next((g for g in grants if g["user"] == user and "domains" in g),
                      {"domains": []})
    names = list(old["domains"])
    for name in domains or []:
        problem = domain_name_problem(name)
        if problem:
            raise UsageError(f"acl: domain {name!r} is refused: {problem}; nothing was changed")
        if name not in names:
            names.append(name)
    return others + [{"user": user, "domains": names}]


def describe(grant: Grant) -> str:
    if grant.get("read_only"):
        return "read-only"
    return "domains " + ", ".join(json.dumps(d) for d in grant.get("domains", []))


def cmd_acl(args: argparse.Namespace) -> int:
    host = host_from(args)
    with locked(host, args, writes=args.acl_command != "show"):  # read under the lock
        return _acl(host, args)


def _acl(host: Host, args: argparse.Namespace) -> int:
    before, grants = read_grants(host)
    if args.acl_command == "show":
        return show(host, grants)
    user = _checked_user(host, args.user)
    if args.acl_command == "grant":
        new = granted(grants, user, args.read_only, args.domain)
    else:
        new = [g for g in grants if g["user"] != user]
    unchanged = (f"{RULES_FILE} already says so" if new != grants
                 else f"{user} has no grant in {RULES_FILE}")
    changes = rules_changes(host, before, new) if new != grants else []
    consent = host.config.may_edit(LIBVIRTD_CONF)
    if args.acl_command == "grant" and consent:
        changes += access_driver_changes(host)
    outcome = show_and_apply(host, changes, f"acl {args.acl_command} {user}",
                             dry_run=args.dry_run, unchanged=unchanged, as_json=args.json)
    if not outcome.changed or args.json:
        return 0
    if not polkit_driver_on(host):
        print(f"libvirtd does not ask polkit per API call yet: set access_drivers ="
              f' [ "polkit" ] in {LIBVIRTD_CONF} (or let virtdeb: virtdeb acl grant ...'
              " --set virtdeb.allow_edit=libvirtd.conf), then restart libvirtd")
    return 0


def show(host: Host, grants: list[Grant]) -> int:
    if not grants:
        where = "has none" if host.path(RULES_FILE).exists() else "does not exist"
        print(f"no grants ({RULES_FILE} {where})")
    for grant in sorted(grants, key=lambda g: str(g["user"])):
        print(f"{grant['user']}: {describe(grant)}")
    state = polkit_driver_on(host)
    print({None: f"{LIBVIRTD_CONF}: missing", True: "libvirtd access driver: polkit (grants"
           " apply)", False: "libvirtd access driver: none (grants do not apply until"
           ' access_drivers = [ "polkit" ])'}[state])
    return 0
