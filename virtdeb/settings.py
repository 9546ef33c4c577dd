"""Every key of virtdeb.conf: its default, what it may be, and the debconf question that
asks it.  A leaf module (it imports nothing of virtdeb): config validates with it,
debconf_answers maps questions to keys with it, and the rules read the values through
``host.config``.

Sections: ``[virtdeb]`` (virtdeb's own), one per rule that has settings (the section is
the rule's name), and ``[apt]`` (the apt hook).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Setting:
    """One ``key = value`` of virtdeb.conf: its default, what it may be, who asks it.

    ``kind`` is ``words`` (space-separated; ``allowed`` empty: any word), ``flag``
    (yes or no) or ``choice`` (one of ``allowed``).  ``question`` names the debconf
    template that asks it (debian/templates), if one does.
    """

    default: str
    kind: Literal["words", "flag", "choice"]
    allowed: tuple[str, ...] = ()
    question: str | None = None

    def problem(self, value: str) -> str | None:
        """Why ``value`` (blanks already folded) is not valid, or None: the one validator."""
        if self.kind == "words":
            bad = [w for w in value.split() if self.allowed and w not in self.allowed]
            return (f"unknown value {bad[0]!r} (choose from {', '.join(sorted(self.allowed))})"
                    if bad else None)
        allowed = ("yes", "no") if self.kind == "flag" else self.allowed
        return None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"

    def from_debconf(self, raw: str) -> str:
        """A debconf answer as this setting's value; ValueError when it is not valid."""
        if self.kind == "flag":
            return "yes" if raw.strip() == "true" else "no"
        value = " ".join(raw.replace(",", " ").split()) if self.kind == "words" else raw.strip()
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value


def words(default: str = "", allowed: tuple[str, ...] = (),
          question: str | None = None) -> Setting:
    return Setting(default, "words", allowed, question)


def flag(default: str, question: str | None = None) -> Setting:
    return Setting(default, "flag", (), question)


def choice(default: str, allowed: tuple[str, ...], question: str | None = None) -> Setting:
    return Setting(default, "choice", allowed, question)


# The files of other packages virtdeb may edit only with the admin's say.
FOREIGN_FILES = {
    "qemu.conf": "/etc/libvirt/qemu.conf",
    "xend-config.sxp": "/etc/xen/xend-config.sxp",
    "bridge.conf": "/etc/qemu/bridge.conf",
    "libvirtd.conf": "/etc/libvirt/libvirtd.conf",
    "network.conf": "/etc/libvirt/network.conf",
}

# section -> key -> Setting, in the order of virtdeb.conf (the rules' sections in the
# order doctor shows the rules).
SCHEMA: dict[str, dict[str, Setting]] = {
    "virtdeb": {"allow_edit": words(allowed=tuple(FOREIGN_FILES),
                                    question="virtdeb/allow_edit")},
    "xend": {"http_server": flag("no", question="virtdeb/xend_http_server")},
    "network": {"autostart_default": flag("yes", question="virtdeb/network_autostart"),
                "recreate_default": flag("no")},
    "bridge": {"allow": words(question="virtdeb/bridge_allow"), "setuid_fallback": flag("no")},
    "access": {"users": words(question="virtdeb/access_users"), "prune": flag("no")},
    "qemu": {"clear_emulator_capabilities": choice("keep", ("keep", "0"))},
    "cpu": {"on_microcode": choice("warn", ("warn", "fix", "nothing"),
                                   question="virtdeb/cpu_on_microcode")},
    "apt": {"block_on_fragile": flag("no")},
}
