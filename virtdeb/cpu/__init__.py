"""The CPU-model engine: CPU models against the host CPU (``virtdeb cpu-check``).

README.Debian ("CPU models and microcode"): a microcode update can take CPU
features away (TSX: ``hle``, ``rtm``); a domain whose custom CPU model needs
them then no longer starts ("Host CPU does not provide required features").
It compares every defined domain's custom CPU with what the
hypervisor can give (``compareHypervisorCPU``, once per distinct definition),
names the missing features, and rewrites a definition on request: disable
just the missing features, or pick a named model the host can run, or
host-model.  A rewrite is a journaled ``DomainXMLChange`` (effects/domain.py):
``virtdeb revert`` defines the previous XML again, byte for byte.

By job: :mod:`.xml` (the domain's CPU XML), :mod:`.compare` (against the
hypervisor), :mod:`.fix` (the rewrites), :mod:`.microcode` (marker, baseline,
boot-time check, called by :mod:`virtdeb.maint`); the command is
commands/cpu_check.py.  Only the standard library is imported at module level
(the apt hook uses the XML helpers).
"""

from __future__ import annotations

STRATEGIES = ("disable-missing", "model", "host-model")
XML_INACTIVE_SECURE = 2 | 1  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
COMPARE_FAIL_INCOMPATIBLE = 1  # VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
BASELINE_EXPAND = 1  # VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
ERR_CPU_INCOMPATIBLE = 91  # VIR_ERR_CPU_INCOMPATIBLE
ERR_UNSUPPORTED = (3, 84)  # VIR_ERR_NO_SUPPORT, VIR_ERR_OPERATION_UNSUPPORTED
CHECK_HINT = "virtdeb cpu-check; fix with: virtdeb cpu-check --fix disable-missing"
