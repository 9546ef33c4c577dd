"""The ``alternative`` effect: ``update-alternatives --set NAME PATH``, revertible to the
mode and value before (``auto``, or the old value set by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from virtdeb.effects import Change, ConflictError, Record
from virtdeb.errors import SystemCommandError
from virtdeb.host import Host
from virtdeb.system.alternatives import State, argv, query


@dataclass
class AlternativeChange(Change):
    """``update-alternatives --set NAME PATH``, revertible to the mode and value before."""

    kind: ClassVar[str] = "alternative"
    rule: str
    name: str
    before: State
    path: str
    note: str = ""
    target: str = field(init=False)

    def __post_init__(self) -> None:
        self.target = f"alternative {self.name}"

    def diff(self) -> str:
        old = f"{self.before.value or 'none'} ({self.before.status})"
        text = f"update-alternatives --set {self.name} {self.path}  # was {old}\n"
        return text + (f"# {self.note}\n" if self.note else "")

    def prepare(self, host: Host) -> None:
        if query(host, self.name) != self.before:
            raise ConflictError(f"alternative {self.name}: changed while virtdeb was"
                                " planning; run the command again")
        if self.path not in self.before.choices:
            raise SystemCommandError(f"alternative {self.name}: {self.path} is not"
                                     " registered; reinstall the package that provides it")

    def record(self, host: Host) -> Record:
        return {"kind": self.kind, "target": self.target, "name": self.name,
                "status": self.before.status, "value": self.before.value, "after": self.path}

    def apply(self, host: Host) -> None:
        host.run(argv(host, "--set", self.name, self.path))

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        name, status, value = record["name"], record["status"], record["value"]
        now = query(host, name)
        if now is not None and now.status == status and now.value == value:
            return f"alternative {name}: already as before"
        if now is None or now.status != "manual" or now.value != record["after"]:
            shown = "gone" if now is None else f"{now.value} ({now.status})"
            raise ConflictError(f"alternative {name}: changed since virtdeb set it (now"
                                f" {shown}); not reverted: set it by hand with"
                                f" update-alternatives --config {name}")
        if status == "auto":
            host.run(argv(host, "--auto", name))
            return f"alternative {name}: back to automatic mode"
        if value is None:
            raise ConflictError(f"alternative {name}: had no value before; set it by hand")
        host.run(argv(host, "--set", name, value))
        return f"alternative {name}: set back to {value}"
