"""The alternatives system of a root, through dpkg's own ``update-alternatives``.

For a root other than ``/`` every call carries ``--root ROOT`` (the links,
/etc/alternatives and /var/lib/dpkg/alternatives are all taken inside it) and
``--log ROOT/var/log/dpkg.log``.  effects.alternative.AlternativeChange sets a link group
to one alternative and records the previous mode and value, so revert gives
the group back in ``auto`` mode or set to its old value by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtdeb.host import Host


@dataclass(frozen=True)
class State:
    """One link group: ``status`` is ``auto`` or ``manual``; ``value`` the chosen path."""

    name: str
    status: str
    value: str | None
    choices: tuple[str, ...]


def argv(host: Host, *args: str) -> list[str]:
    argv = ["update-alternatives"]
    if not host.is_live:
        argv += ["--root", str(host.root), "--log", str(host.path("/var/log/dpkg.log"))]
    return argv + list(args)


def query(host: Host, name: str) -> State | None:
    """The state of link group ``name``, or None when no alternative is registered."""
    proc = host.run(argv(host, "--query", name), check=False)
    if proc.returncode != 0:
        return None
    fields: dict[str, str] = {}
    choices: list[str] = []
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "Alternative":
            choices.append(value)
        else:
            fields.setdefault(key, value)
    chosen = fields.get("Value")
    return State(name, fields.get("Status", ""), None if chosen == "none" else chosen,
                 tuple(choices))
