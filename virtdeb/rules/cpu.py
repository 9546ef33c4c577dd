"""Rule ``cpu`` (README.Debian "CPU models and microcode").

A microcode update can take CPU features away (Intel's TSX: ``hle``, ``rtm``);
a domain with a custom CPU model that requires them no longer starts: "Host
CPU does not provide required features".  The check compares every defined
domain's custom CPU with what the hypervisor gives (``virtdeb cpu-check``) and
shows the state of the microcode marker, baseline and last report.  Fixing
rewrites a domain definition, which is the administrator's: it is done by
``virtdeb cpu-check --fix`` (or at boot with ``[cpu] on_microcode = fix``),
not by ``apply``.
"""

from __future__ import annotations

from virtdeb.cpu import CHECK_HINT
from virtdeb.errors import VirtdebError
from virtdeb.rules import Finding, Rule, Status, register


@register
class Cpu(Rule):
    name = "cpu"
    title = "domains' CPU models fit the host CPU"
    # microcode packages (file triggers match the path as shipped: /lib and /usr/lib)
    triggers = ("/lib/firmware/intel-ucode", "/usr/lib/firmware/intel-ucode",
                "/lib/firmware/amd-ucode", "/usr/lib/firmware/amd-ucode")

    def check(self) -> list[Finding]:
        return self._domains() + self._microcode() + self._fleet()

    def _fleet(self) -> list[Finding]:
        """The fleet baseline saved here by ``virtdeb cpu-baseline --save``, if any."""
        from virtdeb.cpu.state import FLEET_STATE

        if not self.host.path(FLEET_STATE).exists():
            return []  # the usual case: no import of the fleet engine
        from virtdeb.cpu.drift import check_local

        try:
            result = check_local(self.host)
        except VirtdebError as exc:
            return [self.finding(Status.WARN, "cannot compare the saved fleet baseline:"
                                 f" {exc.message}", "start libvirtd, or pass --connect URI")]
        if result is None:
            return []
        if result["problems"]:
            return [self.finding(Status.FAIL, p, "virtdeb cpu-baseline URI...")
                    for p in result["problems"]]
        return [self.finding(Status.PASS, f"this host gives the fleet's CPU baseline saved"
                             f" {result['saved']} ({FLEET_STATE})")]

    # The engine is imported where it is used: maint imports every rule for its
    # declarations, and doctor of another rule must not pay for the CPU engine.
    def _domains(self) -> list[Finding]:
        try:
            conn = self.host.connect()  # first: no daemon, no engine to import
            from virtdeb.cpu.compare import inspect

            reports, _ = inspect(conn)
        except VirtdebError as exc:
            return [self.finding(Status.WARN, f"cannot compare the domains' CPUs: {exc.message}",
                                 "start libvirtd, or pass --connect URI")]
        out = []
        for r in reports:
            if r.broken:
                out.append(self.finding(Status.FAIL, r.line(), CHECK_HINT))
            elif r.verdict is not None and r.fragile:
                out.append(self.finding(Status.NOTE, r.line(),
                                        "a microcode update that removes a feature stops it"))
        if not out:
            custom = sum(r.verdict is not None for r in reports)
            out.append(self.finding(Status.PASS, f"{custom} of {len(reports)} domains have a"
                                    " custom CPU model; all fit this host, none fragile"))
        return out

    def _microcode(self) -> list[Finding]:
        from virtdeb.cpu.state import BASELINE, LAST_REPORT, MARKER, read_json

        out = []
        marker = read_json(self.host, MARKER)
        if marker is not None:
            out.append(self.finding(Status.NOTE, f"microcode updated ({marker.get('time')}):"
                                    " the domains are checked again after the next boot",
                                    "reboot to load it; virtdeb cpu-check checks now"))
        elif self.host.path(MARKER).exists():
            out.append(self.finding(Status.NOTE, "microcode updated: a check after the next"
                                    " boot is pending"))
        baseline = read_json(self.host, BASELINE)
        if baseline is not None:
            flags = baseline.get("cpuinfo_flags") or []
            out.append(self.finding(Status.NOTE, f"CPU baseline of {baseline.get('time')}:"
                                    f" {len(flags)} flags, microcode"
                                    f" {baseline.get('microcode') or 'unknown'}"))
        last = read_json(self.host, LAST_REPORT)
        if last is not None:
            broken, fixed = last.get("broken", 0), last.get("fixed") or []
            status = Status.WARN if broken and len(fixed) < broken else Status.NOTE
            text = (f"last check ({last.get('reason')}, {last.get('time')}): {broken}"
                    f" incompatible domain(s)" + (f", fixed: {', '.join(fixed)}" if fixed else ""))
            out.append(self.finding(status, text, f"see {LAST_REPORT}"))
        return out
