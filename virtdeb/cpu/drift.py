"""A fleet's saved CPU baseline: what changed since (drift), the report as text, the change
that saves the result, and the local check the microcode path runs."""


from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virtdeb import fsio
from virtdeb.cpu.fleet_host import LibvirtHost
from virtdeb.cpu.state import FLEET_STATE, read_json
from virtdeb.effects import Change
from virtdeb.host import Host

MATRIX_ROWS = 15  # more guests than this: the matrix shows only those that cannot move


# ------------------------------------------------------------------ pure: drift
@dataclass(frozen=True)
class Drift:
    text: str
    loss: bool  # something that worked no longer does


def drift(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[Drift]:
    """What changed between two :meth:`Fleet.as_json` results (saved first)."""
    out: list[Drift] = []
    old_hosts = {h["uri"]: h for h in saved.get("hosts", [])}
    new_hosts = {h["uri"]: h for h in now.get("hosts", [])}
    old_moves = _moves(saved)
    new_moves = _moves(now)
    for uri, new in new_hosts.items():
        old = old_hosts.get(uri)
        name = f"host {new.get('label')} ({uri})"
        if old is None:
            out.append(Drift(f"{name} is new since the saved baseline", False))
            continue
        if not new.get("ok") or not old.get("ok"):
            if old.get("ok") and not new.get("ok"):
                out.append(Drift(f"{name} answered then, not now ({new.get('error')})", True))
            continue
        lost = sorted(set(old.get("features", [])) - set(new.get("features", [])))
        gained = sorted(set(new.get("features", [])) - set(old.get("features", [])))
        moved = sorted(guest for guest, targets in old_moves.items()
                       if targets.get(uri) is True and new_moves.get(guest, {}).get(uri) is False)
        old_vendor = old.get("host_model", {}).get("vendor")
        new_vendor = new.get("host_model", {}).get("vendor")
        what = []
        if old_vendor != new_vendor:
            what.append(f"changed CPU vendor from {old_vendor or 'unknown'} to"
                        f" {new_vendor or 'unknown'}")
        if lost:
            what.append("lost " + ", ".join(lost))
        if what or moved:
            text = f"{name} " + ("; ".join(what) if what else "changed")
            if moved:
                text += (f": guests {', '.join(guest for guest, _home in moved)} can no longer"
                         f" move to {new.get('label')}")
            else:
                text += ": no guest is affected"
            out.append(Drift(text, True))
        if gained:
            out.append(Drift(f"{name} gained " + ", ".join(gained), False))
        old_usable = set(old.get("usable_models", []))
        gone = sorted(old_usable - set(new.get("usable_models", [])))
        if gone:
            out.append(Drift(f"{name} can no longer run the named models"
                             f" {', '.join(gone)}", True))
    answered = {h["uri"]: h["label"] for h in now.get("hosts", []) if h.get("ok")}
    for name, home in sorted(set(old_moves) - set(new_moves)):
        if home in answered:
            out.append(Drift(f"guest {name} of host {answered[home]} ({home}) is no longer"
                             " defined", False))
    for uri, old in old_hosts.items():
        if uri not in new_hosts:
            out.append(Drift(f"host {uri} (then {old.get('label')}) was not asked this time",
                             False))
    old_base = saved.get("baseline", {})
    new_base = now.get("baseline", {})
    shrunk = sorted(set(old_base.get("features") or []) - set(new_base.get("features") or []))
    if old_base.get("cpu_xml") and new_base.get("cpu_xml") and shrunk:
        models = (f" ({old_base.get('model')} -> {new_base.get('model')})"
                  if old_base.get("model") != new_base.get("model") else "")
        out.append(Drift("the fleet baseline lost " + ", ".join(shrunk) + models
                         + ": guests defined with the saved one cannot move to every host",
                         True))
    return out


def _moves(result: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, bool | None]]:
    """(guest, its host) -> target host -> can it move there."""
    return {(d["name"], d["host"]): {uri: m.get("can") for uri, m in d["moves"].items()}
            for d in result.get("domains", [])}


# -------------------------------------------------------------- pure: the text
def render(result: Mapping[str, Any], changes: Sequence[Drift] = (),
           saved_time: str | None = None) -> str:
    """The report for a person: one screen for a small fleet."""
    lines: list[str] = []
    hosts = result["hosts"]
    label = {h["uri"]: h["label"] for h in hosts}
    width = max(len(h["uri"]) for h in hosts)
    answered = [h for h in hosts if h["ok"]]
    lines.append(f"hosts: {len(answered)} of {len(hosts)} answered"
                 f" ({result['seconds']:.2f} s)")
    for h in hosts:
        if h["ok"]:
            hm = h["host_model"]
            lines.append(f"  {h['label']}  {h['uri']:<{width}}  libvirt {h['libvirt']},"
                         f" host-model {hm['model']} ({hm['vendor'] or 'no vendor'})"
                         f" {len(h['features'])} features")
        else:
            error = str(h["error"]).removeprefix(f"{h['uri']}: ")
            lines.append(f"  {h['label']}  {h['uri']:<{width}}  NO ANSWER: {error}")
    base = result["baseline"]
    if base["cpu_xml"]:
        refused = base["refused_by"]
        accepted = " ".join(label[u] for u in base["accepted_by"]) or "none"
        lines.append(f"fleet baseline (migratable): {base['model']}"
                     f" ({base['vendor'] or 'no vendor'}) {len(base['features'])} features;"
                     f" accepted by {accepted}"
                     + "".join(f"; REFUSED by {label[u]}: {why}" for u, why in refused.items()))
        if base["note"]:
            lines.append(f"  {base['note']}")
    elif answered:
        lines.append(f"fleet baseline: NONE: {base['error']}")
    named = result["named_model"]
    if named["common"]:
        text = (f"newest named model usable on every host that answered:"
                f" {named['common']['model']}")
    elif answered:
        text = "no named model is usable on every host that answered"
    else:
        text = ""
    if named["better"]:
        better = named["better"]
        lacks = "; ".join(f"{label[u]} lacks {', '.join(f)}" for u, f in better["lacks"].items())
        text += (f"; {better['model']} is usable on"
                 f" {' '.join(label[u] for u in better['usable_on'])} only ({lacks})")
    if text:
        lines.append(text)
    lines += _matrix(result, label)
    if saved_time is not None:
        if changes:
            lines.append(f"since the saved baseline of {saved_time}:")
            lines += [f"  {c.text}" for c in changes]
        else:
            lines.append(f"no change since the saved baseline of {saved_time}")
    return "\n".join(lines) + "\n"


SHORT = {"home": "home", "yes": "yes", "no": "NO", "adapts": "adapts", "unchecked": "yes*",
         "passthrough": "?pass", "no-answer": "?"}


def _matrix(result: Mapping[str, Any], label: Mapping[str, str]) -> list[str]:
    domains = result["domains"]
    if not domains:
        return ["no domains defined on the hosts that answered"]
    uris = [h["uri"] for h in result["hosts"]]
    rows = [d for d in domains
            if len(domains) <= MATRIX_ROWS or any(m["can"] is not True
                                                  for m in d["moves"].values())]
    names = [f"{d['name']}@{label[d['host']]}" for d in rows]
    width = max([len(n) for n in names] + [5])
    lines = ["migration matrix (can the guest move to the host of the column):",
             (f"  {'guest':<{width}}  " + " ".join(f"{label[u]:<6}" for u in uris)).rstrip()]
    for name, d in zip(names, rows, strict=True):
        cells = [SHORT.get(d["moves"].get(u, {}).get("state", "?"), "?") for u in uris]
        lines.append(f"  {name:<{width}}  " + " ".join(f"{c:<6}" for c in cells).rstrip())
    if len(rows) < len(domains):
        lines.append(f"  ({len(domains) - len(rows)} more guests can move to every host)")
    cannot = [(d, u, m) for d in domains for u, m in d["moves"].items() if m["can"] is False]
    if cannot:
        lines.append("cannot move:")
        for d, u, m in cannot:
            why = (f"missing {', '.join(m['missing'])}" if m["missing"] else m["message"])
            if m["vendor_mismatch"] and m["missing"]:
                why = "CPU vendor differs; " + why
            lines.append(f"  {d['name']}@{label[d['host']]} -> {label[u]}: {why}")
    legend = {SHORT[s]: s for d in rows for m in d["moves"].values()
              for s in [m["state"]] if s in ("unchecked", "passthrough", "no-answer")}
    if legend:
        lines.append("  (" + "; ".join(f"{k}: {_LEGEND[v]}" for k, v in legend.items()) + ")")
    return lines


_LEGEND = {"unchecked": "no CPU model that libvirt checks",
           "passthrough": "host-passthrough, only between identical hosts",
           "no-answer": "the host did not answer"}


# ------------------------------------------------------------- saved baselines
def load_saved(host: Host) -> dict[str, Any] | None:
    return read_json(host, FLEET_STATE)


def save_changes(host: Host, result: Mapping[str, Any]) -> list[Change]:
    """The change that records the fleet's result (none when the file says so already);
    the caller applies it under virtdeb's lock, so ``virtdeb revert`` undoes it.

    The models' blockers are left out: only what :func:`drift` compares is kept.
    """
    from virtdeb.effects.file import FileChange

    hosts = [{k: v for k, v in h.items() if k != "unusable_models"} for h in result["hosts"]]
    data = (json.dumps({**result, "hosts": hosts}, indent=1, sort_keys=True) + "\n").encode()
    before = fsio.read_bytes(host.path(FLEET_STATE), FLEET_STATE)
    return [] if before == data else [FileChange("cpu", FLEET_STATE, before, data)]


def check_local(host: Host) -> dict[str, Any] | None:
    """Does this host still give the saved fleet baseline and the saved guests' CPUs?

    For the microcode trigger, the boot check and rule ``cpu``: None when no fleet
    baseline was saved here.  ``problems`` has a sentence for each thing this host
    no longer accepts (the callers log or report them; this never prints).
    """
    saved = load_saved(host)
    if saved is None or not (saved.get("baseline") or {}).get("cpu_xml"):
        return None
    hv = LibvirtHost(host.uri)
    hv.conn = host.connect()  # the Host's connection: not closed here
    answered = [h for h in saved.get("hosts", []) if h.get("ok")]
    arch = answered[0].get("arch") if answered else None
    virttype = answered[0].get("virttype", "kvm") if answered else "kvm"
    when = saved.get("time")
    verdict = hv.compare(saved["baseline"]["cpu_xml"], arch, virttype)
    problems = []
    if not verdict.compatible:
        problems.append(f"this host no longer gives the fleet's CPU baseline saved {when}"
                        f" ({verdict.problem()}): guests defined with it cannot move here;"
                        " run virtdeb cpu-baseline over the fleet")
    refused = {}
    for d in saved.get("domains", []):
        if not d.get("cpu_xml") or not any(m.get("can") for m in d.get("moves", {}).values()):
            continue
        v = hv.compare(d["cpu_xml"], arch, virttype)
        if not v.compatible:
            refused[f"{d['name']}@{d['host']}"] = v.problem()
    if refused:
        problems.append(f"guests of the fleet baseline saved {when} that can no longer run"
                        " here: " + "; ".join(f"{k}: {v}" for k, v in refused.items()))
    return {"saved": when, "baseline_accepted": verdict.compatible,
            "baseline_problem": "" if verdict.compatible else verdict.problem(),
            "guests_refused": refused, "problems": problems}
