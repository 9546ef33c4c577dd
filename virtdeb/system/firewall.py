"""The forward hook of the host's firewalls: iptables-legacy, iptables-nft, native nft.

A forwarded packet must be accepted by every table that hooks netfilter's
forward hook.  libvirt writes its rules into one of them: with its iptables
backend into the tables of the ``iptables`` command (legacy or nf_tables, as the
alternative points), with its nftables backend into its own native table
``libvirt_network``.  A DROP policy of any other forward chain drops guests'
traffic (Docker and ufw set one).

Read with ``iptables-legacy -S FORWARD``, ``iptables-nft -S FORWARD`` and
``nft -j list ruleset`` through :meth:`Host.run`, in the Host's network
namespace when it names one.  iptables-legacy is asked only when the kernel has
a legacy filter table (/proc/net/ip_tables_names): asking would load it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from virtdeb.errors import SystemCommandError
from virtdeb.host import Host
from virtdeb.system.procfs import in_netns, net_text

LIBVIRT_NFT_TABLE = "libvirt_network"
# the tables iptables-nft makes in nf_tables: iptables -S shows them already
IPTABLES_NFT_TABLES = {("ip", "filter"), ("ip6", "filter")}


class ToolMissing(Exception):
    """The command is not installed (in the Host's view)."""


@dataclass(frozen=True)
class ForwardChain:
    """A chain on the forward hook and what it does to a packet no rule accepts."""

    where: str    # "iptables-nft", "iptables-legacy", "nft table inet fw"
    chain: str
    policy: str   # ACCEPT or DROP
    drops_rest: bool = False  # ends with an unconditional -j DROP / REJECT
    rules: tuple[str, ...] = ()  # iptables: the rules of the chain, after "-A FORWARD"

    @property
    def drops(self) -> bool:
        return self.policy.upper() == "DROP" or self.drops_rest

    def drops_guests(self, bridge: str) -> bool:
        """Whether it drops what comes in from ``bridge``: it drops the rest and no rule
        accepts ``-i BRIDGE`` (an admin's or libvirt's own accept)."""
        accepts = any(f"-i {bridge} " in f"{rule} " and rule.endswith("-j ACCEPT")
                      for rule in self.rules)
        return self.drops and not accepts


def tool_output(host: Host, argv: list[str]) -> str:
    """The output of a read-only firewall command; ToolMissing when it is not installed."""
    try:
        proc = host.run(in_netns(host, argv), check=False)
    except SystemCommandError as exc:  # not found (no netns)
        raise ToolMissing(argv[0]) from exc
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        if "No such file or directory" in err and argv[0] in err:  # ip netns exec
            raise ToolMissing(argv[0])
        raise SystemCommandError(f"{' '.join(argv)} failed ({proc.returncode}): "
                                 f"{err.splitlines()[-1] if err else 'no output'}")
    return proc.stdout


def parse_iptables_forward(where: str, text: str) -> ForwardChain | None:
    """The FORWARD chain of ``iptables -S FORWARD`` output, or None when it has no policy."""
    policy = None
    rules = []
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["-P", "FORWARD"] and len(words) >= 3:
            policy = words[2]
        elif words[:2] == ["-A", "FORWARD"]:
            rules.append(" ".join(words[2:]))
    if policy is None:
        return None
    return ForwardChain(where, "FORWARD", policy, rules=tuple(rules),
                        drops_rest=bool(rules) and rules[-1] in ("-j DROP", "-j REJECT"))


IPTABLES_V = ["iptables", "-V"]
NFT_RULESET = ["nft", "-j", "list", "ruleset"]


def iptables_flavor(host: Host) -> str:
    """What the ``iptables`` command is: "iptables-nft" or "iptables-legacy"."""
    out = tool_output(host, IPTABLES_V)
    return "iptables-nft" if "nf_tables" in out else "iptables-legacy"


def _forward_argv(host: Host, flavor: str) -> list[str] | None:
    """The command that lists ``flavor``'s FORWARD chain; None when there is none to list."""
    if flavor == "iptables-legacy":
        names = net_text(host, "/proc/net/ip_tables_names") or ""
        if "filter" not in names.split():
            return None  # no legacy filter table: nothing hooks forward there
    return [flavor, "-S", "FORWARD"]


def iptables_forward(host: Host, flavor: str) -> ForwardChain | None:
    """The FORWARD chain of ``flavor`` (iptables-nft or iptables-legacy), or None."""
    argv = _forward_argv(host, flavor)
    return None if argv is None else parse_iptables_forward(flavor, tool_output(host, argv))


def commands(host: Host) -> list[list[str]]:
    """The commands iptables_forward (of both flavors), nft_forward and iptables_flavor
    run, as the Host runs them (in its network namespace): to start them early."""
    argvs = [_forward_argv(host, flavor) for flavor in ("iptables-legacy", "iptables-nft")]
    return [in_netns(host, argv) for argv in [*argvs, NFT_RULESET, IPTABLES_V] if argv]


def _nft_rule(expr: object) -> str:
    """An nft rule in iptables words, as far as the forward check needs them: "-j DROP"
    for a bare drop or reject, "-i IF -j ACCEPT" for ``iifname IF accept``, else ""."""
    if not isinstance(expr, list) or not all(isinstance(e, dict) for e in expr):
        return ""
    if len(expr) == 1:
        return "-j DROP" if "drop" in expr[0] or "reject" in expr[0] else ""
    if len(expr) == 2 and "accept" in expr[1]:
        match = expr[0].get("match")
        if isinstance(match, dict) and match.get("op", "==") == "==" \
                and match.get("left") == {"meta": {"key": "iifname"}} \
                and isinstance(match.get("right"), str):
            return f"-i {match['right']} -j ACCEPT"
    return ""


def parse_nft_forward(text: str) -> list[ForwardChain]:
    """The native nftables base chains on the forward hook (``nft -j list ruleset``),
    without those iptables-nft made."""
    try:
        data = json.loads(text or "{}")
    except ValueError as exc:
        raise SystemCommandError(f"nft -j list ruleset: unreadable JSON output ({exc})") from exc
    items = data.get("nftables", []) if isinstance(data, dict) else []
    chains: dict[tuple[str, str, str], dict[str, object]] = {}
    rules: dict[tuple[str, str, str], list[str]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("chain"), dict):
            chain = item["chain"]
            key = (str(chain.get("family")), str(chain.get("table")), str(chain.get("name")))
            if chain.get("hook") == "forward":
                chains[key] = chain
        elif isinstance(item.get("rule"), dict):
            rule = item["rule"]
            key = (str(rule.get("family")), str(rule.get("table")), str(rule.get("chain")))
            rules.setdefault(key, []).append(_nft_rule(rule.get("expr")))
    out = []
    for (family, table, name), chain in chains.items():
        if (family, table) in IPTABLES_NFT_TABLES and name == "FORWARD":
            continue
        listed = rules.get((family, table, name), [])
        out.append(ForwardChain(f"nft table {family} {table}", name,
                                str(chain.get("policy", "accept")).upper(),
                                drops_rest=bool(listed) and listed[-1] == "-j DROP",
                                rules=tuple(r for r in listed if r)))
    return out


def nft_forward(host: Host) -> list[ForwardChain]:
    return parse_nft_forward(tool_output(host, NFT_RULESET))


CSUM = "CONFIG_NET_ACT_CSUM"


def _kernel_config(host: Host, release: str) -> str | None:
    """The running kernel's configuration (/proc/config.gz or /boot/config-RELEASE)."""
    import gzip  # here: doctor needs it only for libvirt's nftables backend

    from virtdeb import fsio

    data = fsio.read_bytes(host.path("/proc/config.gz"), "/proc/config.gz")
    if data is not None:
        try:
            return gzip.decompress(data).decode("utf-8", "replace")
        except (OSError, EOFError):
            return None
    boot = fsio.read_bytes(host.path(f"/boot/config-{release}"), f"/boot/config-{release}")
    return None if boot is None else boot.decode("utf-8", "replace")


def tc_csum(host: Host) -> bool | None:
    """Whether the running kernel has tc's csum action (act_csum), which libvirt's nftables
    backend needs to start a network; None when nothing says."""
    release = os.uname().release
    if host.path("/sys/module/act_csum").exists():
        return True
    config = _kernel_config(host, release)
    if config is None:
        return None
    if f"{CSUM}=y" in config:
        return True
    if f"{CSUM}=m" in config:
        return any(any(host.path(f"{lib}/modules/{release}/kernel/net/sched")
                       .glob("act_csum.ko*")) for lib in ("/lib", "/usr/lib"))
    return False
