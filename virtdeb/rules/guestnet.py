"""Rule ``guestnet``: why a guest on the default NAT network has no network.

README.Debian's NAT section ends at "start it, autostart it, and have the
packages".  What takes guests off the network on today's Debian hosts is mostly
something else; this rule checks it, read-only:

- the firewall backend libvirt writes its rules with: ``firewall_backend`` in
  /etc/libvirt/network.conf (libvirt >= 10.4, read through libvirt's lens), else
  iptables when installed, else nftables; libvirt < 10.4 (bookworm's 9.0) has
  no network.conf and uses iptables only; the nftables backend also needs tc's
  csum action in the kernel (CONFIG_NET_ACT_CSUM), without which every NAT network
  fails to start ("Failed to load TC action module");
- the forward hook of iptables-legacy, iptables-nft and native nftables: a DROP
  policy (Docker, ufw's DEFAULT_FORWARD_POLICY="DROP") in a table libvirt does
  not write to drops guests' forwarded traffic, because a packet must be
  accepted by every table that hooks forward;
- IP forwarding: the kernel's ``net.ipv4.ip_forward`` and the sysctl files that
  set it to 0;
- a program bound to port 53 on every address (libvirt's dnsmasq then cannot
  start: "Address already in use");
- an active default network whose subnet a route or address of another device
  overlaps (a VPN, Docker's bridge); an inactive one is rule ``network``'s.

plan() sets ``firewall_backend = "iptables"`` in network.conf (libvirt's conffile:
a foreign change, journaled) when that fixes something: the nftables backend beside
an iptables-nft FORWARD DROP (Docker, ufw; Debian bug #1090355), or on a kernel
without tc's csum action.  Everything else gets a hint: other firewalls' rules and
DNS servers' addresses are the administrator's; an inactive network on a subnet in
use is moved by rule ``network``.  Firewall rules doctor may not read (not root)
are a NOTE each.

A file virtdeb must read and cannot (network.conf malformed, an unknown
``firewall_backend``) is an error: one line naming the file and line, nothing
written.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from virtdeb import dpkgstatus, fsio
from virtdeb.effects import Change
from virtdeb.errors import LibvirtError, ParseError, VirtdebError
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.rules.network import (
    BACKENDS,
    FIREWALL_SINCE,
    MIN_PREFIX,
    NAME,
    NETWORK_CONF,
    NETWORK_LENS,
    firewall_backend,
    xml_subnet,
)
from virtdeb.system import dpkg as sysdpkg
from virtdeb.system import firewall as fw
from virtdeb.system import listeners, sysctl
from virtdeb.system import net as sysnet
from virtdeb.system.libvirt import lookup_network

log = logging.getLogger(__name__)

DNS_PORT = 53
RESTART = "and restart libvirtd"


def backend_line(host: Host) -> int | None:
    """The line of the last ``firewall_backend`` setting in network.conf, or None."""
    data = fsio.read_bytes(host.path(NETWORK_CONF), NETWORK_CONF) or b""
    found = None
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if line.strip().startswith("firewall_backend"):
            found = number
    return found


class Backend:
    """Which backend libvirt uses, why, and the table it writes to."""

    def __init__(self, name: str, why: str, modern: bool) -> None:
        self.name = name      # iptables or nftables
        self.why = why        # for a person
        self.modern = modern  # libvirt >= 10.4: network.conf can choose


def libvirt_backend(host: Host) -> Backend | None:
    """libvirt's firewall backend, or None when no libvirt daemon is installed."""
    version = sysdpkg.libvirt_version(host)
    if version is None:
        return None
    if dpkgstatus.compare(version, FIREWALL_SINCE) < 0:
        return Backend("iptables", f"libvirt {version} has no {NETWORK_CONF}: it writes its"
                       " rules with iptables only", modern=False)
    configured = firewall_backend(host)
    if configured is not None and configured not in BACKENDS:
        raise ParseError(NETWORK_CONF, backend_line(host), None,
                         f"unknown firewall_backend {configured!r}",
                         f"set it to \"iptables\" or \"nftables\" (libvirt {version} knows"
                         f" no other) {RESTART}")
    if configured is not None:
        return Backend(configured, f"firewall_backend = {configured} in {NETWORK_CONF}"
                       f" (libvirt {version})", modern=True)
    chosen = "iptables" if host.installed("iptables") else "nftables"
    return Backend(chosen, f"libvirt {version}, no firewall_backend in {NETWORK_CONF}:"
                   f" {chosen}, the first of iptables, nftables installed", modern=True)


@dataclass
class FirewallView:
    """libvirt's backend, the table it writes to and the forward chains of the host."""

    backend: Backend
    iptables_flavor: str  # what the iptables command is (iptables-nft, iptables-legacy)
    chains: list[fw.ForwardChain]
    missing: list[str]    # the firewall commands not installed
    bridge: str
    tc_csum: bool | None = None  # the kernel has tc's csum action (None: unknown)
    unreadable: list[str] = field(default_factory=list)  # "tool: why", rules not read

    @property
    def nftables_cannot_start(self) -> bool:
        """libvirt's nftables backend on a kernel without tc's csum action: every NAT
        network fails to start ("Failed to load TC action module")."""
        return self.backend.name == "nftables" and self.tc_csum is False

    @property
    def switch_helps(self) -> bool:
        """Whether firewall_backend = "iptables" would fix something, and libvirt and the
        host have what it needs (libvirt >= 10.4, iptables)."""
        return (self.backend.modern and self.backend.name == "nftables"
                and "iptables" not in self.missing
                and (self.nftables_cannot_start or any(map(self.switch_fixes, self.dropping))))

    @property
    def writes_to(self) -> str:
        if self.backend.name == "iptables":
            return self.iptables_flavor
        return f"nft table inet {fw.LIBVIRT_NFT_TABLE}"

    @property
    def dropping(self) -> list[fw.ForwardChain]:
        """The forward chains that drop guests' traffic and that libvirt does not write to."""
        return [c for c in self.chains
                if c.drops_guests(self.bridge) and c.where != self.writes_to]

    def switch_fixes(self, chain: fw.ForwardChain) -> bool:
        """Whether libvirt's iptables backend would write into ``chain``'s table."""
        return (self.backend.modern and self.backend.name == "nftables"
                and "iptables" not in self.missing and chain.where == self.iptables_flavor)


def forward_chains(host: Host) -> tuple[list[fw.ForwardChain], list[str], list[str]]:
    """The forward chains of iptables-legacy, iptables-nft and nft; the tools missing; why
    a tool's rules could not be read (not root, a tool failing)."""
    chains: list[fw.ForwardChain] = []
    missing: list[str] = []
    unreadable: list[str] = []
    for tool in ("iptables-legacy", "iptables-nft", "nft"):
        try:
            if tool == "nft":
                chains += fw.nft_forward(host)
            else:
                chains += [c for c in [fw.iptables_forward(host, tool)] if c is not None]
        except fw.ToolMissing:
            missing.append(tool)
        except VirtdebError as exc:
            unreadable.append(f"{tool}: {exc.message}")
    return chains, missing, unreadable


def firewall_view(host: Host, bridge: str) -> FirewallView | None:
    """What libvirt's firewall meets on this host; None when no libvirt is installed."""
    backend = libvirt_backend(host)
    if backend is None:
        return None
    chains, missing, unreadable = forward_chains(host)
    try:
        flavor = fw.iptables_flavor(host)
    except fw.ToolMissing:
        flavor = "iptables-nft"  # Debian's default alternative
        missing.append("iptables")
    csum = fw.tc_csum(host) if backend.name == "nftables" else None
    return FirewallView(backend, flavor, chains, missing, bridge, csum, unreadable)


@register
class GuestNet(Rule):
    name = "guestnet"
    title = "why a guest has no network"
    postinst = False

    def check(self) -> list[Finding]:
        net, active = self._network()
        bridge, subnet = _bridge_and_subnet(net)
        out = self._firewall(bridge)
        out += self._forwarding(active)
        out += self._port53(active)
        if active and subnet is not None:
            out += self._collision(subnet, bridge)
        return out

    def commands(self) -> list[list[str]]:
        """firewall_view's commands, when check() gets to them (libvirt is installed)."""
        try:
            return fw.commands(self.host) if libvirt_backend(self.host) is not None else []
        except VirtdebError:
            return []  # check() says it

    # -- libvirt's network ------------------------------------------------------
    def _network(self) -> tuple[Any, bool]:
        try:
            net = lookup_network(self.host, NAME)
            return net, net is not None and bool(net.isActive())
        except LibvirtError as exc:
            log.info("guestnet: %s", exc)
            return None, False

    # -- firewall ---------------------------------------------------------------
    def _firewall(self, bridge: str) -> list[Finding]:
        view = firewall_view(self.host, bridge)
        if view is None:
            return [self.finding(Status.NA, "no libvirt daemon installed")]
        backend = view.backend
        out = [self.finding(Status.NOTE, f"libvirt's firewall backend: {backend.name}"
                            f" ({backend.why})")]
        if backend.name == "nftables" and "nft" in view.missing:
            out.append(self.finding(Status.FAIL, "libvirt's backend is nftables but the"
                                    " nft command is missing: the network cannot start",
                                    "apt install nftables, or set firewall_backend ="
                                    f" \"iptables\" in {NETWORK_CONF} {RESTART}"))
        if view.nftables_cannot_start:
            out.append(self.finding(Status.FAIL, "libvirt's nftables backend needs tc's csum"
                                    f" action ({fw.CSUM}), which this kernel lacks: the"
                                    " network fails to start (\"Failed to load TC action"
                                    " module\")", _switch_hint(view)))
        out += [self.finding(Status.NOTE, f"cannot read the forward rules of {why}",
                             "run doctor as root to check them") for why in view.unreadable]
        out += [self.finding(Status.NOTE, f"{tool} is not installed: its forward rules are"
                             " not checked") for tool in view.missing
                if not (tool == "nft" and backend.name == "nftables")]
        for chain in view.dropping:
            out.append(self.finding(Status.FAIL, "guests' forwarded traffic is dropped by the"
                                    f" {chain.where} {chain.chain} chain ({_why(chain)}),"
                                    f" which libvirt's {backend.name} backend does not write"
                                    " to", _drop_hint(chain, view, bridge)))
        if not view.dropping and not view.unreadable:
            checked = ", ".join(sorted({c.where for c in view.chains})) or \
                "no forward chain found"
            out.append(self.finding(Status.PASS, "no firewall drops guests' forwarded traffic"
                                    f" ({checked})"))
        return out

    def plan(self) -> list[Change]:
        """firewall_backend = "iptables" in network.conf when libvirt's nftables rules sit
        beside an iptables table (the one the iptables backend writes into) that drops
        forwarded traffic.  network.conf is libvirt's conffile: the change is ``foreign``
        (postinst makes it only with allow_edit = network.conf; the admin's CLI run is
        consent).  libvirtd and the network must be restarted for it to take effect."""
        net, _ = self._network()
        bridge, _ = _bridge_and_subnet(net)
        view = firewall_view(self.host, bridge)
        if view is None or not view.switch_helps or not self.host.path(NETWORK_CONF).exists():
            return []
        from virtdeb.edit import Editor  # here: doctor reads network.conf through network's

        with Editor(self.host, NETWORK_CONF, NETWORK_LENS, rule=self.name, foreign=True) as ed:
            ed.ensure("firewall_backend", "iptables")
        for change in ed.changes:
            why = (f"into the {view.iptables_flavor} table that drops forwarded traffic"
                   if view.dropping else f"without tc's csum action ({fw.CSUM})")
            change.note = (f" libvirt writes its rules with iptables, {why}; then:"
                           f" systemctl restart libvirtd; virsh net-destroy {NAME};"
                           f" virsh net-start {NAME}")
        changes: list[Change] = list(ed.changes)
        return changes

    # -- IP forwarding ------------------------------------------------------------
    def _forwarding(self, active: bool) -> list[Finding]:
        out = []
        sets = sysctl.assignments(self.host)
        off = [a for a in sets if a.value == "0"]
        last_off = bool(sets) and sets[-1].value == "0"
        remove = f"; remove {', '.join(a.where for a in off)}" if off else ""
        runtime = sysctl.runtime_ip_forward(self.host)
        if runtime == "0" and active:
            out.append(self.finding(Status.FAIL, f"IP forwarding is off ({sysctl.IP_FORWARD}"
                                    f" = 0) while network '{NAME}' is active: guests reach"
                                    " nothing beyond the host",
                                    f"sysctl -w {sysctl.IP_FORWARD}=1 (libvirt sets it when it"
                                    f" starts the network){remove}"))
        elif runtime == "0":
            out.append(self.finding(Status.NOTE, f"IP forwarding is off ({sysctl.IP_FORWARD}"
                                    f" = 0); libvirt turns it on when it starts network"
                                    f" '{NAME}'"))
        elif runtime == "1":
            out.append(self.finding(Status.PASS, f"IP forwarding is on ({sysctl.IP_FORWARD}"
                                    " = 1)"))
        if last_off:
            out.append(self.finding(Status.WARN, f"{sets[-1].where} sets {sets[-1].key} = 0:"
                                    " after the next boot (or sysctl --system) guests reach"
                                    " nothing beyond the host until libvirt restarts the"
                                    " network", f"remove that line, or set it to 1{remove}"))
        return out

    # -- port 53 --------------------------------------------------------------------
    def _port53(self, active: bool) -> list[Finding]:
        taken = listeners.wildcard_listeners(self.host, DNS_PORT)
        if not taken:
            return [self.finding(Status.PASS, f"no program holds port {DNS_PORT} on every"
                                 " address")]
        sockets: dict[str, list[str]] = {}
        for lst in taken:
            sockets.setdefault(lst.who(), []).append(f"{lst.proto} {lst.address}")
        who = "; ".join(f"{name} on {', '.join(where)}" for name, where in sockets.items())
        comms = {comm for lst in taken for _, comm in lst.processes}
        effect = ("the network runs now, but will not start again" if active else
                  f"virsh net-start {NAME} fails with \"Address already in use\"")
        return [self.finding(Status.WARN if active else Status.FAIL,
                             f"port {DNS_PORT} is taken on every address by {who}: libvirt's"
                             f" dnsmasq cannot bind it ({effect})", _port53_hint(comms))]

    # -- subnet --------------------------------------------------------------------
    def _collision(self, subnet: ipaddress.IPv4Network, bridge: str) -> list[Finding]:
        try:
            used = [*((i.network, dev) for i, dev in sysnet.addresses_on(self.host)),
                    *sysnet.routes_on(self.host)]
        except VirtdebError as exc:
            return [self.finding(Status.NOTE, "cannot list the host's addresses and routes",
                                 exc.message)]
        clash = sorted({f"{n} ({dev or 'no device'})" for n, dev in used
                        if dev != bridge and n.prefixlen >= MIN_PREFIX and n.overlaps(subnet)})
        if not clash:
            return [self.finding(Status.PASS, f"network '{NAME}' ({subnet}) overlaps no other"
                                 " route or address")]
        return [self.finding(Status.FAIL, f"network '{NAME}' ({subnet} on {bridge}) overlaps"
                             f" {', '.join(clash)}: guests' traffic to that range goes the"
                             " wrong way",
                             f"virsh net-destroy {NAME}, then virtdeb apply network moves it"
                             f" to a free subnet (or: virsh net-edit {NAME})")]


def _bridge_and_subnet(net: Any) -> tuple[str, ipaddress.IPv4Network | None]:
    if net is None:
        return "virbr0", None
    try:
        xml = net.XMLDesc(0)  # the live definition: what the running network uses
        bridge = str(net.bridgeName())
    except LibvirtError as exc:
        log.info("guestnet: %s", exc)
        return "virbr0", None
    return bridge, xml_subnet(xml)


def _switch_hint(view: FirewallView) -> str:
    how = " (virtdeb apply guestnet; a maintainer script: allow_edit = network.conf)" \
        if "iptables" not in view.missing else " (apt install iptables first)"
    return f"set firewall_backend = \"iptables\" in {NETWORK_CONF}{how} {RESTART}"


def _why(chain: fw.ForwardChain) -> str:
    return f"policy {chain.policy}" if chain.policy.upper() == "DROP" else \
        "its last rule drops everything"


def _drop_hint(chain: fw.ForwardChain, view: FirewallView, bridge: str) -> str:
    if chain.where.startswith("iptables"):
        cmd = chain.where
        if view.switch_fixes(chain):
            return _switch_hint(view) + ": libvirt then writes its rules into that table"
        accept = f"{cmd} -I FORWARD -i {bridge} -j ACCEPT; {cmd} -I FORWARD -o {bridge}" \
                 " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        docker = " (Docker: in chain DOCKER-USER)" if cmd == "iptables-nft" else ""
        return f"accept {bridge}'s traffic there: {accept}{docker}"
    rule = f"nft insert rule {chain.where.removeprefix('nft table ')} {chain.chain}"
    return (f"accept {bridge}'s traffic there: {rule} oifname \"{bridge}\" ct state"
            f" established,related accept; {rule} iifname \"{bridge}\" accept")


def _port53_hint(comms: Sequence[str] | set[str]) -> str:
    if "dnsmasq" in comms:
        return ("virtdeb apply dnsmasq (the drop-in with interface=lo and bind-interfaces"
                " for Debian's dnsmasq), then restart dnsmasq")
    if "named" in comms:
        return ("list the addresses bind9 serves in listen-on { ...; }; of"
                " /etc/bind/named.conf.options (not every address)")
    return "make that program listen on the addresses it serves, not on every address"
