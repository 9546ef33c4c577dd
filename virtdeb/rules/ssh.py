"""Rule ``ssh`` (README.Debian "SSH connections to the server").

A client of libvirt older than 6.8 reaches ``qemu+ssh://`` servers by running
``nc`` on the server, and needs the OpenBSD netcat (``-U`` for unix sockets):
netcat-openbsd installed and the ``nc`` alternative pointing at
``nc.openbsd`` (the choice is ``/bin/nc.openbsd`` on every suite, while the
file moved to ``/usr/bin`` in trixie).  libvirt 6.8 and later run ``virt-ssh-helper`` instead,
so nc matters only for older peers.  An ``nc`` the administrator set by hand
(alternative in manual mode) is left alone.
"""

from __future__ import annotations

from virtdeb import dpkgstatus
from virtdeb.effects import Change
from virtdeb.errors import VirtdebError
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.system import alternatives
from virtdeb.system import dpkg as sysdpkg

PACKAGE = "netcat-openbsd"
NC = "/bin/nc.openbsd"
HELPER_SINCE = "6.8"


def has_ssh_helper(version: str | None) -> bool:
    """Whether this libvirt version runs virt-ssh-helper for qemu+ssh (>= 6.8)."""
    if version is None:
        return False
    return dpkgstatus.compare(version, HELPER_SINCE) >= 0


@register
class Ssh(Rule):
    name = "ssh"
    title = "nc for qemu+ssh:// clients"
    triggers = ("/bin/nc.openbsd", "/usr/bin/nc.openbsd")  # netcat-openbsd's nc

    def check(self) -> list[Finding]:
        version = sysdpkg.libvirt_version(self.host)
        helper = has_ssh_helper(version)
        out = []
        if helper:
            out.append(self.finding(Status.NOTE, f"libvirt {version} serves qemu+ssh://"
                                    " through virt-ssh-helper",
                                    "nc is used only by clients older than libvirt 6.8"))
        nc, state = self._nc()
        if nc == "no-package":
            out.append(self.finding(Status.NOTE if helper else Status.WARN,
                                    f"{PACKAGE} is not installed",
                                    f"apt install {PACKAGE} for qemu+ssh:// clients older"
                                    " than libvirt 6.8"))
        elif nc == "not-offered":
            out.append(self.finding(Status.WARN, f"the nc alternative does not offer {NC}",
                                    f"reinstall {PACKAGE} (apt install --reinstall {PACKAGE})"))
        elif nc == "ok":
            out.append(self.finding(Status.PASS, f"nc points to {NC}"))
        elif nc == "manual":
            assert state is not None
            out.append(self.finding(Status.NOTE, f"nc was set by hand to {state.value};"
                                    " virtdeb leaves it",
                                    f"older qemu+ssh clients need {NC}:"
                                    f" update-alternatives --set nc {NC}"))
        else:
            assert state is not None
            out.append(self.finding(Status.NOTE if helper else Status.WARN,
                                    f"nc points to {state.value}, not {NC}",
                                    "virtdeb apply ssh"))
        return out

    def commands(self) -> list[list[str]]:
        """update-alternatives --query nc, when _nc gets to it."""
        try:
            return [alternatives.argv(self.host, "--query", "nc")] \
                if self.host.installed(PACKAGE) else []
        except VirtdebError:
            return []  # check() says it

    def _nc(self) -> tuple[str, alternatives.State | None]:
        """Where nc stands, for check() and plan() alike: no-package, not-offered, ok,
        manual (set by hand: left alone) or other (virtdeb sets it)."""
        if not self.host.installed(PACKAGE):
            return "no-package", None
        state = alternatives.query(self.host, "nc")
        if state is None or NC not in state.choices:
            return "not-offered", state
        if state.value == NC:
            return "ok", state
        return ("manual" if state.status == "manual" else "other"), state

    def plan(self) -> list[Change]:
        from virtdeb.effects.alternative import AlternativeChange  # here: not for doctor

        nc, state = self._nc()
        if nc != "other" or state is None:
            return []
        return [AlternativeChange(
            self.name, "nc", state, NC,
            note="for qemu+ssh:// clients older than libvirt 6.8 (README.Debian)")]
