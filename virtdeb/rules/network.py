"""Rule ``network`` (README.Debian "The default NAT network").

libvirt's NAT network ``default`` should be defined, active and started at
boot ("virsh net-start default", "virsh net-autostart default"), with the
recommended packages dnsmasq-base, bridge-utils and the firewall tool of
libvirt's backend (iptables for libvirt < 10.4, as in bookworm; the one named
by ``firewall_backend`` in /etc/libvirt/network.conf when set; else nftables
or iptables).  Everything goes through libvirt-python, never virsh.

plan() starts the network and sets autostart (libvirt autostarts networks only
once per boot, so a maintainer script has to start it itself).  When the
network is not defined at all and virtdeb never saw it, it is defined from
libvirt's template, /usr/share/libvirt/networks/default.xml (a built-in copy
of the same XML when the file is absent), on a subnet that overlaps no
address, no route and no other libvirt network of the host, at any prefix
length.  :func:`pick_subnet` tries, in this order:

1. 192.168.122.0/24 (the template's own subnet);
2. 192.168.123.0/24, 192.168.124.0/24, ... 192.168.254.0/24;
3. 172.16.122.0/24, 172.17.122.0/24, ... 172.31.122.0/24;
4. 10.0.122.0/24, 10.1.122.0/24, ... 10.255.122.0/24;

and fails with a clear error when every one is taken.  Routes shorter than /8
(the default route, a VPN's 0.0.0.0/1 + 128.0.0.0/1 pair) say nothing about a
local subnet and are ignored, as are IPv6 addresses and routes.

virtdeb remembers in /var/lib/virtdeb/network-default.json (written through
the journal) that it has looked after ``default``, and whether it defined it.
A network that virtdeb saw and that is gone afterwards was removed by the
administrator: virtdeb reports it and does not define it again, unless asked
with ``virtdeb apply network --set network.recreate_default=yes``.  With
``[network] autostart_default = no`` the rule only checks.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

from virtdeb import dpkgstatus, fsio
from virtdeb.effects import Change
from virtdeb.errors import LibvirtError, ParseError, VirtdebError
from virtdeb.host import Host
from virtdeb.rules import Finding, Rule, Status, register
from virtdeb.system import dpkg as sysdpkg
from virtdeb.system import net as sysnet
from virtdeb.system.libvirt import lookup_network, module, network_xmls

if TYPE_CHECKING:  # imported where used: doctor on a host at rest needs neither
    import xml.etree.ElementTree as ET

    from virtdeb.effects.network import NetworkChange

log = logging.getLogger(__name__)

NAME = "default"
TEMPLATE = "/usr/share/libvirt/networks/default.xml"
# libvirt 9.0's template, used when the file is absent (libvirt-daemon-config-network
# not installed).
BUILTIN_TEMPLATE = """<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"""
STATE = "/var/lib/virtdeb/network-default.json"
NETWORK_CONF = "/etc/libvirt/network.conf"
FIRST = ipaddress.IPv4Network("192.168.122.0/24")
MIN_PREFIX = 8  # shorter routes are default routes in disguise
PACKAGES = ("dnsmasq-base", "bridge-utils")
FORCE = "virtdeb apply network --set network.recreate_default=yes"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class NoFreeSubnet(VirtdebError):
    """Every candidate subnet for the default network is in use on the host."""

    name = "no-free-subnet"
    exit_code = 1


def candidates() -> Iterator[ipaddress.IPv4Network]:
    """The subnets :func:`pick_subnet` tries, in order (see the module docstring)."""
    for c in range(122, 255):
        yield ipaddress.IPv4Network(f"192.168.{c}.0/24")
    for b in range(16, 32):
        yield ipaddress.IPv4Network(f"172.{b}.122.0/24")
    for b in range(256):
        yield ipaddress.IPv4Network(f"10.{b}.122.0/24")


def pick_subnet(used: Sequence[Net], preferred: ipaddress.IPv4Network = FIRST) \
        -> ipaddress.IPv4Network:
    """The first candidate (``preferred`` first) that overlaps none of ``used``."""
    taken = [n for n in used if n.version == 4 and n.prefixlen >= MIN_PREFIX]
    for cand in chain([preferred], candidates()):
        if not any(cand.overlaps(n) for n in taken):
            return cand
    raise NoFreeSubnet(
        "no free subnet for libvirt's network 'default': 192.168.122-254.0/24,"
        " 172.16-31.122.0/24 and 10.0-255.122.0/24 all overlap an address or route of"
        " this host; define it by hand (virsh net-define) on a subnet of your choice")


# -- the network's XML --------------------------------------------------------
def parse_xml(xml: str, shown: str) -> ET.Element:
    """The root of a network XML (libvirt's or a root-owned template), or a ParseError."""
    import xml.etree.ElementTree as ET  # here: only with a network to read

    try:
        return ET.fromstring(xml)  # noqa: S314 - trusted: libvirt or a root-owned file
    except ET.ParseError as exc:
        line, col = exc.position
        raise ParseError(shown, line, col, f"not valid XML ({exc})",
                         "restore it from libvirt-daemon-config-network") from exc


def _ipv4_element(root: ET.Element) -> ET.Element | None:
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
            return ip
    return None


def xml_subnet(xml: str) -> ipaddress.IPv4Network | None:
    """The IPv4 subnet of a network's XML (its first ``<ip>``), or None."""
    try:
        ip = _ipv4_element(parse_xml(xml, "network XML"))
    except ParseError:
        return None
    if ip is None:
        return None
    mask = ip.get("netmask") or ip.get("prefix") or "24"
    try:
        return ipaddress.IPv4Interface(f"{ip.get('address')}/{mask}").network
    except ValueError:
        return None


def network_xml(template: str, subnet: ipaddress.IPv4Network, net_uuid: str,
                shown: str = TEMPLATE) -> str:
    """The template with ``net_uuid`` and, moved to ``subnet``, its address and DHCP range."""
    import xml.etree.ElementTree as ET

    root = parse_xml(template, shown)
    node = root.find("uuid")
    if node is None:
        node = ET.Element("uuid")
        node.tail = root.text  # the template's indentation
        root.insert(0, node)
    node.text = net_uuid
    ip = _ipv4_element(root)
    if ip is not None and xml_subnet(template) != subnet:
        hosts = list(subnet.hosts())
        ip.set("address", str(hosts[0]))
        ip.attrib.pop("prefix", None)
        ip.set("netmask", str(subnet.netmask))
        for rng in ip.findall("dhcp/range"):
            rng.set("start", str(hosts[1]))
            rng.set("end", str(hosts[-1]))
        for dhcp in ip.findall("dhcp"):
            for host_entry in dhcp.findall("host"):
                dhcp.remove(host_entry)  # static leases of the old subnet
    return ET.tostring(root, encoding="unicode") + "\n"


def read_template(host: Host) -> str:
    data = fsio.read_bytes(host.path(TEMPLATE), TEMPLATE)
    return BUILTIN_TEMPLATE if data is None else data.decode("utf-8", "replace")


# -- libvirt --------------------------------------------------------------------
def other_subnets(host: Host, name: str) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of every other libvirt network, active or not."""
    subnets = (xml_subnet(xml) for other, xml in network_xmls(host).items() if other != name)
    return [s for s in subnets if s is not None]


# -- packages -------------------------------------------------------------------
NETWORK_LENS = "Libvirtd_network.lns"  # libvirt's own lens (libvirt >= 10.4)
BACKENDS = ("iptables", "nftables")
# libvirt >= 10.4 without firewall_backend takes the first backend present, in the
# order Debian builds it with (network.conf: "[iptables, nftables]").
FIREWALL_SINCE = "10.4"


def collision(host: Host, net: Any) -> tuple[ipaddress.IPv4Network,
                                             list[ipaddress.IPv4Network]] | None:
    """(subnet, used) when NET's subnet overlaps an address or route of the host or another
    libvirt network (only meaningful while NET is inactive: then its bridge has no
    address), else None."""
    subnet = xml_subnet(net.XMLDesc(module().VIR_NETWORK_XML_INACTIVE))
    if subnet is None:
        return None
    try:
        used = sysnet.used_networks(host, other_subnets(host, NAME))
    except VirtdebError as exc:
        log.info("network: cannot list the host's addresses and routes: %s", exc)
        return None
    taken = [n for n in used if n.version == 4 and n.prefixlen >= MIN_PREFIX]
    return (subnet, used) if any(subnet.overlaps(n) for n in taken) else None


def firewall_backend(host: Host) -> str | None:
    """``firewall_backend`` of /etc/libvirt/network.conf (through libvirt's lens), or None."""
    if not host.path(NETWORK_CONF).exists():
        return None
    from virtdeb.edit import Editor

    with Editor(host, NETWORK_CONF, NETWORK_LENS) as ed:
        values = ed.values("firewall_backend")
    return values[-1] if values else None


def firewall_packages(host: Host) -> tuple[str, ...]:
    """The packages of which one must be installed for libvirt's firewall backend.

    The one ``firewall_backend`` names; else, libvirt >= 10.4 takes iptables or
    nftables, whichever is there; older libvirt (bookworm's 9.0) only iptables.
    """
    backend = firewall_backend(host)
    if backend in BACKENDS:
        return (backend,)
    version = sysdpkg.libvirt_version(host)
    if version:
        if dpkgstatus.compare(version, FIREWALL_SINCE) >= 0:
            return BACKENDS
    return ("iptables",)


# -- the rule -------------------------------------------------------------------
def _state(host: Host) -> tuple[bytes | None, dict[str, Any] | None]:
    data = fsio.read_bytes(host.path(STATE), STATE)
    if data is None:
        return None, None
    import json  # here, as uuid in _define: doctor rarely needs them

    try:
        value = json.loads(data)
    except ValueError:
        return data, {}
    return data, value if isinstance(value, dict) else {}


def _state_bytes(defined_by_virtdeb: bool) -> bytes:
    import json

    body = {"network": NAME, "defined_by_virtdeb": defined_by_virtdeb}
    return (json.dumps(body, sort_keys=True) + "\n").encode()


@register
class Network(Rule):
    name = "network"
    title = "the default NAT network"

    def check(self) -> list[Finding]:
        return self._check_network() + self._check_packages()

    def _check_packages(self) -> list[Finding]:
        missing = [p for p in PACKAGES if not self.host.installed(p)]
        try:
            firewall = firewall_packages(self.host)
        except ParseError as exc:
            return [self.finding(Status.WARN, f"cannot read {NETWORK_CONF}", exc.message)]
        if not any(self.host.installed(p) for p in firewall):
            missing.append(" or ".join(firewall))
        if missing:
            return [self.finding(Status.WARN, f"recommended packages missing: {', '.join(missing)}",
                                 f"apt install {' '.join(m.split()[0] for m in missing)}")]
        present = [*PACKAGES, next(p for p in firewall if self.host.installed(p))]
        return [self.finding(Status.PASS, f"{', '.join(present)} installed")]

    def _check_network(self) -> list[Finding]:
        try:
            net = lookup_network(self.host, NAME)
            active = net is not None and bool(net.isActive())
            autostart = net is not None and bool(net.autostart())
        except LibvirtError as exc:
            return [self.finding(Status.WARN, f"cannot ask libvirt about network '{NAME}'",
                                 exc.message)]
        checking = "" if self.host.config.flag("network", "autostart_default") else \
            " ([network] autostart_default = no: virtdeb only checks)"
        if net is None:
            _, state = _state(self.host)
            if state is not None:
                return [self.finding(Status.NOTE, f"network '{NAME}' was removed by the"
                                     " administrator; virtdeb leaves it removed",
                                     f"to have it back: {FORCE}")]
            return [self.finding(Status.FAIL, f"network '{NAME}' is not defined",
                                 f"virtdeb apply network defines it from {TEMPLATE}{checking}")]
        out = []
        clash = None if active or net is None else collision(self.host, net)
        if active:
            out.append(self.finding(Status.PASS, f"network '{NAME}' is active"))
        elif clash is not None:
            out.append(self.finding(Status.FAIL, f"network '{NAME}' is not active: its subnet"
                                    f" {clash[0]} is in use on this host",
                                    f"virtdeb apply network moves it to {pick_subnet(clash[1])}"
                                    f" (or: virsh net-edit {NAME}){checking}"))
        else:
            out.append(self.finding(Status.FAIL, f"network '{NAME}' is not active",
                                    f"virtdeb apply network (virsh net-start {NAME}){checking}"))
        if autostart:
            out.append(self.finding(Status.PASS, f"network '{NAME}' starts at boot"))
        else:
            out.append(self.finding(Status.WARN, f"network '{NAME}' does not start at boot",
                                    f"virtdeb apply network (virsh net-autostart {NAME})"
                                    f"{checking}"))
        return out

    def plan(self) -> list[Change]:
        from virtdeb.effects.file import FileChange  # here: doctor imports no effect
        from virtdeb.effects.network import NetworkChange

        if not self.host.config.flag("network", "autostart_default"):
            return []
        before, state = _state(self.host)
        net = lookup_network(self.host, NAME)
        defined_by_virtdeb = bool(state and state.get("defined_by_virtdeb"))
        changes: list[Change] = []
        if net is None:
            if state is not None and not self.host.config.flag("network", "recreate_default"):
                log.info("network %s was removed by the administrator; not recreating", NAME)
                return []
            changes.append(self._define())
            defined_by_virtdeb = True
        elif not net.isActive() or not net.autostart():
            clash = None if net.isActive() else collision(self.host, net)
            if clash is not None and (state is None or defined_by_virtdeb):
                # libvirt's own definition (or virtdeb's) cannot start where it is: move it
                changes.append(self._move(net, *clash))
            else:
                changes.append(NetworkChange(self.name, NAME, net.UUIDString(),
                                             start=not net.isActive(),
                                             autostart=not net.autostart()))
        after = _state_bytes(defined_by_virtdeb)
        if before != after:
            changes.append(FileChange(self.name, STATE, before, after, mode=0o644))
        return changes

    def _move(self, net: Any, subnet: ipaddress.IPv4Network,
              used: list[ipaddress.IPv4Network]) -> NetworkChange:
        from virtdeb.effects.network import NetworkMove

        new = pick_subnet(used, subnet)
        xml = network_xml(net.XMLDesc(module().VIR_NETWORK_XML_INACTIVE), new,
                          net.UUIDString(), f"network {NAME}")
        return NetworkMove(self.name, NAME, net.UUIDString(), define_xml=xml,
                           note=f" moved from {subnet} (in use on this host) to {new}")

    def _define(self) -> NetworkChange:
        import uuid  # here: doctor never needs it

        from virtdeb.effects.network import NetworkChange

        template = read_template(self.host)
        preferred = xml_subnet(template) or FIRST
        used = sysnet.used_networks(self.host, other_subnets(self.host, NAME))
        subnet = pick_subnet(used, preferred)
        net_uuid = str(uuid.uuid4())
        xml = network_xml(template, subnet, net_uuid)
        source = TEMPLATE if self.host.path(TEMPLATE).exists() else "virtdeb's copy of it"
        return NetworkChange(self.name, NAME, net_uuid, define_xml=xml,
                             note=f" on {subnet} (from {source})")
