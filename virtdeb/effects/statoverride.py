"""The ``statoverride`` effect: ``dpkg-statoverride --update --add``; revert removes it
and gives the file its mode and owner back."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from virtdeb.effects import Change, ConflictError, Record, regular_file
from virtdeb.host import Host
from virtdeb.system.caps import root_args, statoverride


def _mode_owner(real: Path) -> tuple[int, int, int]:
    st = os.lstat(real)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@dataclass
class StatOverrideChange(Change):
    """``dpkg-statoverride --update --add OWNER GROUP MODE PATH``; revert removes it."""

    kind: ClassVar[str] = "statoverride"
    rule: str
    target: str
    owner: str = "root"
    group: str = "root"
    mode: str = "4755"

    def diff(self) -> str:
        return (f"dpkg-statoverride --update --add {self.owner} {self.group} {self.mode}"
                f" {self.target}\n")

    def prepare(self, host: Host) -> None:
        regular_file(host, self.target)
        existing = statoverride(host, self.target)
        if existing:
            raise ConflictError(f"{self.target}: already has a dpkg stat override ({existing});"
                                " virtdeb leaves it alone")

    def record(self, host: Host) -> Record:
        mode, uid, gid = _mode_owner(regular_file(host, self.target))
        return {"kind": self.kind, "target": self.target, "mode": mode, "uid": uid,
                "gid": gid, "override": f"{self.owner} {self.group} {self.mode}"}

    def apply(self, host: Host) -> None:
        host.run(["dpkg-statoverride", *root_args(host), "--update", "--add", self.owner,
                  self.group, self.mode, self.target])

    @classmethod
    def undo(cls, host: Host, record: Record) -> str:
        target = record["target"]
        now = statoverride(host, target)
        if now is None:
            return f"{target}: has no stat override; left alone"
        if now.split()[:3] != record["override"].split():
            raise ConflictError(f"{target}: its stat override changed since virtdeb added it"
                                f" ({now}); not reverted")
        host.run(["dpkg-statoverride", *root_args(host), "--remove", target])
        real = host.path(target)
        if real.is_file() and not real.is_symlink():
            os.chown(real, record["uid"], record["gid"])
            os.chmod(real, record["mode"])
        return f"{target}: stat override removed, mode {record['mode']:o} restored"
