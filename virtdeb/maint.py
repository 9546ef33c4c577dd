"""The maintainer-script entry: postinst ``configure`` and ``triggered``, and boot.

Called by a thin sh postinst (``/usr/lib/virtdeb/maint configure OLDVERSION``
or ``maint triggered "TRIGGER..."``).  It applies what the administrator
allowed: changes to virtdeb's own files always, changes to another package's
conffile only when ``[virtdeb] allow_edit`` names it.  A problem in one rule is
reported and the others still run; an install fails only when virtdeb itself
cannot work (its own configuration file or dpkg's status file is unreadable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from virtdeb import lock
from virtdeb.cpu import microcode
from virtdeb.effects import Change
from virtdeb.effects.domain import DomainXMLChange
from virtdeb.effects.file import FileChange
from virtdeb.errors import VirtdebError
from virtdeb.host import DEFAULT_URI, Host
from virtdeb.journal import Journal
from virtdeb.outcome import Outcome, Refused, apply
from virtdeb.rules import RULES, load_all

log = logging.getLogger(__name__)

def triggers() -> dict[str, list[str]]:
    """Which rules a trigger name runs: a path prefix of the trigger -> rule names
    (each rule's declared ``triggers``; debian/triggers declares the same paths)."""
    out: dict[str, list[str]] = {}
    for name, rule in load_all().items():
        for prefix in rule.triggers:
            out.setdefault(prefix, []).append(name)
    return out


def configure_rules() -> list[str]:
    """The rules postinst configure runs, in order (those declaring ``postinst``)."""
    return [name for name, rule in load_all().items() if rule.postinst]


def refusal(host: Host, change: Change) -> str | None:
    """Why maint must not make ``change`` on its own, or None: virtdeb's own files always;
    another package's conffile only with ``[virtdeb] allow_edit``; a domain's definition
    only with ``[cpu] on_microcode = fix``."""
    if not change.foreign:
        return None
    if isinstance(change, DomainXMLChange):
        return None if host.config.get("cpu", "on_microcode") == "fix" else \
            "a domain's definition is the administrator's ([cpu] on_microcode = fix allows it)"
    if isinstance(change, FileChange) and host.config.may_edit(change.target):
        return None
    return "another package's file; allow it with dpkg-reconfigure virtdeb"


def applied(host: Host, changes: Sequence[Change], command: str, rule: str) -> Outcome:
    """Apply what the administrator allowed (one journal entry); log what was done and
    what was refused."""
    refused = [Refused(rule, c.target, why) for c in changes if (why := refusal(host, c))]
    for item in refused:
        log.warning("%s: not changing %s (%s)", rule, item.target, item.reason)
    allowed = [c for c in changes if refusal(host, c) is None]
    outcome = apply(host, allowed, command, refused=refused)
    if outcome.changed:
        log.warning("%s: changed %s (undo: virtdeb revert %s)", rule,
                    ", ".join(c.target for c in outcome.changes), outcome.journal)
    return outcome


def run_rules(host: Host, names: Sequence[str], command: str) -> int:
    """Plan and apply each rule on its own; return how many rules failed."""
    failed = 0
    known = load_all()
    for name in names:
        if name not in known:
            continue
        try:
            applied(host, RULES[name](host).plan(), f"{command} {name}", name)
        except VirtdebError as exc:
            failed += 1
            log.warning("%s: %s", name, exc.message)
        except Exception:  # noqa: BLE001 - one rule's bug must not stop the others
            failed += 1
            log.exception("%s: internal error (please report it); the other rules go on", name)
    return failed


def save_answers(host: Host) -> Host:
    """Write the debconf answers into virtdeb.conf, with the file's checksum (one journal
    entry); the Host to go on with.

    An answer that is not valid is reported and left out; the file keeps its value.
    Only under debconf (the postinst sourced confmodule): run by hand, the file rules.
    """
    from virtdeb.config import check_setting
    from virtdeb.debconf_answers import read_answers, save_changes

    if "DEBIAN_HAS_FRONTEND" not in os.environ:
        return host
    answers = {}
    for key, value in read_answers().items():
        try:
            check_setting(key, value, "debconf")
        except VirtdebError as exc:
            log.warning("%s; /etc/virtdeb/virtdeb.conf keeps its value", exc.message)
            continue
        answers[key] = value
    changes = save_changes(host, answers) if answers else []
    applied(host, changes + synced_changes(host, changes), "postinst configure debconf",
            "config")
    return Host(root=host.root, uri=host.uri, netns=host.netns)


# sha256 of virtdeb.conf as the postinst last wrote it from debconf: debian/config imports
# the file's values into debconf only when the file differs (the admin edited it since), so
# an answer changed in debconf (debconf-set-selections, Ansible's debconf module) followed
# by dpkg-reconfigure is not overwritten by the file's older value.
SYNCED = "/var/lib/virtdeb/conf.sha256"


def synced_changes(host: Host, changes: Sequence[Change]) -> list[Change]:
    """The change that makes SYNCED hold the checksum of virtdeb.conf as ``changes``
    leave it (none when the file is absent or the checksum is already there)."""
    import hashlib

    from virtdeb import fsio

    conf = fsio.read_bytes(host.config_path, "/etc/virtdeb/virtdeb.conf")
    for change in changes:
        if isinstance(change, FileChange) and host.path(change.target) == host.config_path:
            conf = change.after
    if conf is None:
        return []
    before = fsio.read_bytes(host.path(SYNCED), SYNCED)
    after = (hashlib.sha256(conf).hexdigest() + "\n").encode()
    return [] if before == after else [FileChange("config", SYNCED, before, after)]


def rules_for_triggers(names: Sequence[str]) -> list[str]:
    wanted: list[str] = []
    for trigger in " ".join(names).split():
        for prefix, rules in triggers().items():
            if trigger == prefix or trigger.startswith(prefix + "/"):
                wanted.extend(r for r in rules if r not in wanted)
    return wanted


@contextlib.contextmanager
def reported(rule: str) -> Iterator[None]:
    """A VirtdebError inside is logged as a warning of ``rule``, never raised."""
    try:
        yield
    except VirtdebError as exc:
        log.warning("%s: %s", rule, exc.message)


def main(argv: Sequence[str] | None = None, root: str = "/", uri: str = DEFAULT_URI) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="virtdeb: %(message)s")
    if not args:
        print("usage: maint configure [OLDVERSION] | triggered TRIGGERS | boot", file=sys.stderr)
        return 2
    action = args[0]
    if action not in ("configure", "triggered", "boot"):
        print(f"virtdeb: maint: unknown action {action!r}", file=sys.stderr)
        return 2
    host = Host(root=Path(root), uri=uri)
    try:
        # one lock around the whole action: the plans are made under it; a dpkg
        # that a locked virtdeb started runs this under that virtdeb's lock
        with Journal(host).locked(f"maint {' '.join(args)}",
                                  lock.wait_seconds(None, lock.MAINT_WAIT)):
            return _run(host, action, args[1:])
    except lock.BusyError as exc:
        log.warning("busy: %s; %s", exc.message, _not_done(action, args[1:]))
        return 0  # never fail dpkg because the admin's virtdeb is running
    except VirtdebError as exc:  # the lock itself, or $VIRTDEB_LOCK_WAIT
        print(f"virtdeb: {exc.label}: {exc.message}", file=sys.stderr)
        return 1
    finally:
        host.close()


def _not_done(action: str, rest: Sequence[str]) -> str:
    if action == "configure":
        return "postinst configure did not apply the rules: run dpkg-reconfigure virtdeb"
    if action == "boot":
        return "the CPU models were not checked: run virtdeb cpu-check"
    rules = rules_for_triggers(rest)
    then = "; then virtdeb cpu-check" if "cpu" in rules else ""
    return (f"the trigger did not re-apply its rules: run virtdeb apply"
            f" {' '.join(rules) or 'RULE'}{then}")


def _run(host: Host, action: str, rest: Sequence[str]) -> int:
    try:  # the two files every rule needs: unreadable, virtdeb cannot work
        host.config  # noqa: B018 - virtdeb.conf
        host.installed("virtdeb")  # dpkg's status file
    except VirtdebError as exc:
        print(f"virtdeb: error: {exc.message}", file=sys.stderr)
        return 1
    if action == "configure":
        answered = save_answers(host)
        try:
            run_rules(answered, configure_rules(), "postinst configure")
            with reported("cpu"):  # the baseline the boot unit compares with, recorded once
                applied(answered, microcode.ensure_baseline(answered),
                        "maint configure cpu baseline", "cpu")
        finally:
            if answered is not host:
                answered.close()
    elif action == "triggered":
        wanted = rules_for_triggers(rest)
        run_rules(host, wanted, "postinst triggered")
        if "cpu" in wanted:  # baseline, marker for the next boot, a check now
            with reported("cpu"):
                applied(host, microcode.microcode_triggered(host, " ".join(rest).split()),
                        "maint triggered cpu", "cpu")
    else:  # boot, the boot unit: check the domains' CPUs if something changed
        with reported("cpu"):
            applied(host, microcode.boot(host), "maint boot cpu", "cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
