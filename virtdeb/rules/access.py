"""Rule ``access`` (README.Debian "Access Control"): the ``libvirt`` group.

Membership in the ``libvirt`` system group lets a user manage the system
libvirtd (libvirt's polkit rule 60-libvirt.rules: of libvirt-daemon-system in
Debian 12, of libvirt-daemon-common in 13 and later).  The group is created the way
``addgroup --system libvirt`` would (first free GID in adduser's system range)
and the users named in ``[access] users`` are made members, in /etc/group and
/etc/gshadow.  Membership is root-equivalent: libvirt's whole API, including
writing files on the host.  A member that is not (or no longer) in
``[access] users`` is reported, and removed only with ``[access] prune = yes``
(``virtdeb apply access --set access.prune=yes``).  Finer-grained access:
``virtdeb acl``.
"""

from __future__ import annotations

from virtdeb.effects import Change
from virtdeb.errors import UsageError
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.system import groups

GROUP = "libvirt"
ROOT_EQUIVALENT = ("members can use all of libvirt's API, including changing files on"
                   " the host: treat membership as root access (finer: virtdeb acl)")


def checked_users(host_users: dict[str, int], names: list[str], regex: str,
                  where: str) -> list[str]:
    """``names``, each a valid user name present in the root's /etc/passwd; else UsageError."""
    for name in names:
        problem = groups.user_name_problem(name, regex)
        if problem:
            raise UsageError(f"{where}: {name!r} is refused: {problem}; nothing was changed")
        if name not in host_users:
            raise UsageError(f"{where}: user {name!r} does not exist in /etc/passwd;"
                             " create it first (adduser) or fix the name; nothing was changed")
    return names


@register
class Access(Rule):
    name = "access"
    title = "libvirt group and its members"

    def _wanted(self) -> list[str]:
        users = self.host.config.words("access", "users")
        return checked_users(groups.passwd_users(self.host), users,
                             groups.name_regex(self.host), self.host.config.where("access",
                                                                                 "users"))

    def check(self) -> list[Finding]:
        try:
            wanted = self._wanted()
        except UsageError as exc:
            return [self.finding(Status.FAIL, exc.message.split(";")[0],
                                 "fix [access] users in /etc/virtdeb/virtdeb.conf")]
        group = groups.groups(self.host).get(GROUP)
        if group is None:
            return [self.finding(Status.FAIL, f"system group {GROUP} does not exist",
                                 "virtdeb apply access creates it (as addgroup --system)")]
        out = [self.finding(Status.PASS, f"group {GROUP} exists (GID {group.gid})")]
        out += [self.finding(Status.WARN, f"{user} is in [access] users but not in group"
                             f" {GROUP}", "virtdeb apply access")
                for user in wanted if user not in group.members]
        if wanted:
            prune = self.host.config.flag("access", "prune")
            out += [self.finding(Status.WARN, f"{user} is in group {GROUP} but not in"
                                 " [access] users",
                                 "virtdeb apply access removes it" if prune else
                                 "remove with: virtdeb apply access --set access.prune=yes,"
                                 " or add it to [access] users")
                    for user in group.members if user not in wanted]
        elif group.members:
            out.append(self.finding(Status.NOTE, "[access] users is empty: virtdeb leaves"
                                    f" the membership of {GROUP} alone"))
        members = ", ".join(group.members) or "none"
        out.append(self.finding(Status.NOTE, f"members of {GROUP}: {members}", ROOT_EQUIVALENT))
        return out

    def plan(self) -> list[Change]:
        from virtdeb.effects.group import ensure_group, set_members  # here: not for doctor

        wanted = self._wanted()
        group = groups.groups(self.host).get(GROUP)
        if group is None:
            return list(ensure_group(self.host, GROUP, self.name, wanted))
        add = [u for u in wanted if u not in group.members]
        # An empty [access] users means "virtdeb does not manage membership":
        # prune never empties the group.
        prune = bool(wanted) and self.host.config.flag("access", "prune")
        remove = [u for u in group.members if u not in wanted] if prune else []
        return list(set_members(self.host, GROUP, add, remove, self.name))
