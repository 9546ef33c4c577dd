"""The debconf answers of virtdeb, as ``section.key`` -> value of virtdeb.conf.

The templates are in debian/templates; debian/config puts the values of
/etc/virtdeb/virtdeb.conf into debconf before asking (the file is the truth),
and ``virtdeb.maint`` writes these answers back into the file
(:func:`save_changes`).

Under a debconf frontend (a maintainer script that sourced confmodule, which
sets ``DEBIAN_HAS_FRONTEND``) the protocol runs on stdin and fd 3; elsewhere
``debconf-communicate`` is used, which needs read access to debconf's database.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from virtdeb.effects import Change
    from virtdeb.host import Host
    from virtdeb.settings import Setting

log = logging.getLogger(__name__)


class _DB(Protocol):
    def get(self, question: str) -> str: ...


def questions() -> dict[str, tuple[str, Setting]]:
    """debconf question -> (virtdeb.conf "section.key", its Setting), from the declarations."""
    from virtdeb.config import schema

    return {s.question: (f"{section}.{key}", s) for section, keys in schema().items()
            for key, s in keys.items() if s.question}


def _open() -> tuple[Any, Callable[[], None]]:
    """A debconf connection and how to close it."""
    import debconf  # python3-debconf

    if "DEBIAN_HAS_FRONTEND" in os.environ:
        # A maintainer script that sourced confmodule moved the protocol's write
        # side to fd 3 (DEBCONF_REDIR) and stdout to stderr; the replies still
        # come on stdin.  Debconf() itself points sys.stdout at stderr.
        if os.environ.get("DEBCONF_REDIR"):
            return debconf.Debconf(write=os.fdopen(3, "w", closefd=False)), lambda: None
        return debconf.Debconf(), lambda: None
    stdout = sys.stdout
    try:
        comm = debconf.DebconfCommunicator("virtdeb")
    finally:
        sys.stdout = stdout
    return comm, comm.shutdown


def read_answers(db: _DB | None = None) -> dict[str, str]:
    """The answers debconf has, as overrides for ``Config.parse``.

    Questions debconf does not know (templates not loaded) or with a value
    that cannot be used are left out; no debconf at all gives ``{}``.
    """
    close: Callable[[], None] = lambda: None  # noqa: E731
    if db is None:
        try:
            db, close = _open()
        except Exception as exc:  # noqa: BLE001 - no debconf: no answers
            log.debug("debconf not available: %s", exc)
            return {}
    answers: dict[str, str] = {}
    try:
        for question, (key, setting) in questions().items():
            try:
                raw = db.get(question)
            except Exception as exc:  # noqa: BLE001 - DebconfError(10): unknown question
                log.debug("debconf %s: %s", question, exc)
                continue
            try:
                answers[key] = setting.from_debconf(raw)
            except ValueError as exc:
                log.warning("debconf %s: %s; ignored", question, exc)
    finally:
        try:
            close()
        except Exception:  # noqa: BLE001, S110 - closing a finished pipe
            pass
    return answers


HEADER = ("virtdeb configuration, see virtdeb(8). dpkg-reconfigure virtdeb writes the"
          " answers here; your own edits and comments are kept.")


def save_changes(host: Host, settings: Mapping[str, str], rule: str = "config") -> list[Change]:
    """The edit of /etc/virtdeb/virtdeb.conf that records ``settings`` (section.key -> value).

    Only settings whose value differs from what the file says now are written;
    a new file gets every setting, so it documents itself.  Comments stay.
    """
    from virtdeb.config import Config, check_setting
    from virtdeb.edit import Editor

    current = Config.load(host.config_path)
    shown = current.path
    with Editor(host, shown, "Virtdebconf.lns", rule=rule) as ed:
        if not ed.exists:
            ed.set("#comment", HEADER)
        for dotted, value in settings.items():
            section, key = check_setting(dotted, value, "debconf")
            value = " ".join(value.split())
            if ed.exists and current.get(section, key) == value:
                continue
            existing = ed.match(f"{section}/{key}")  # at most one: Config.load checked
            ed.set(existing[0] if existing else f"{section}/{key}", value or None)
    return list(ed.changes)
