"""The healing scorecard as markdown."""

from __future__ import annotations

from typing import Any


def _s(x: Any) -> str:
    return "–" if x is None else str(x)


def render_markdown(r: dict[str, Any]) -> str:
    rows = r["results"]
    load = r["load"]
    every = sorted({x["monitor_interval_s"] for x in rows if x.get("monitor_interval_s") is not None})
    monitor = (f"the flow monitor every {', '.join(f'{v:g}' for v in every)} s — the default `monitor.interval`"
               if every else "the flow monitor every 2 s")
    out = ["# Lifeline healing scorecard", "",
           f"Started {r['started_at']} with `python -m bench.healing` ({r['seconds']} s). Whole Lifeline in one "
           f"process (listener, dispatcher, the real worker, {monitor}, the API) on an embedded "
           "PostgreSQL and the Temporal dev server; python-hl7 MLLP peers; the Mirth/Rhapsody emulators and the "
           "fake Cloverleaf hcicmd of tests/emulators. The on-call person is simulated: it approves whatever waits "
           "for approval, one second after it appears, and the table records that it had to.",
           f"Machine: {load['nproc']} cores shared with other work; load average at start "
           f"{load['loadavg_at_start']}, at end {load['loadavg_at_end']}."
           + "".join(f" Run {i}: {x['started_at']}, {x['seconds']} s, load {x['load']['loadavg_at_start']} → "
                     f"{x['load']['loadavg_at_end']}." for i, x in enumerate(r.get("runs", []), 1)), "",
           "detect = fault injected → case opened (the surge's fault is its 5x phase, after 10 s at the normal "
           "rate; the flapping peer's is its first outage, after 20 s up — both measured from there, the offset is "
           "in the notes); repair = fixable (injection, or the peer/sender fixed) → case "
           "resolved or remediated-and-cooling-down (– when the case escalated); undelivered = ACKed (so stored: "
           "an AA is sent only after the commit) but not delivered when the scenario ended — held by a paused "
           "destination or still queued for a slow peer, not lost.", "",
           "| fault | mode | detect (s) | signature (right?) | actions (by) | approval needed | repair (s) | stage "
           "| undelivered | notes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        # Right = the case's diagnosis signature starts with the expected one (recomputed so old runs read alike).
        x["diagnosis_right"] = bool(x.get("signature") and x["signature"].startswith(x["expected_signature"]))
        # Repaired = resolved (or remediated and cooling down); measured from when it became fixable, or from the
        # detection when the case was resolved before the fault ended (a flapping peer that was up at the time).
        if x.get("stage") not in ("resolved", "cooling_down"):
            x["repair_s"] = None
        elif x.get("repair_s") is not None and x["repair_s"] < 0 and x.get("detect_s") is not None:
            x["repair_s"] = round(x["resolved_after_s"] - x["detect_s"], 1)
        actions = ", ".join(f"{a['action']} {a['outcome']} ({a['by']})" for a in x.get("actions", [])) or "none"
        approvals = ", ".join(f"{a['action']} ({a['safety']})" for a in x.get("approvals", [])) or "no"
        notes = list(x.get("notes", []))
        if x["fault"] == "backlog_surge":
            notes.append(f"breach at {_s(x.get('breach_s'))} s, forecast lead {_s(x.get('forecast_lead_s'))} s")
        if x.get("injected_after_s"):
            notes.append(f"fault began {x['injected_after_s']} s into the scenario")
        if x.get("case_runs", 1) != 1:
            notes.append(f"{x.get('case_runs')} case runs")
        if x.get("recurrences"):
            notes.append(f"{x['recurrences']} recurrence(s) in the same case (flapping evidence)")
        if x.get("other_cases"):
            notes.append("also opened: " + ", ".join(c.split(":", 1)[1] for c in x["other_cases"]))
        right = "yes" if x["diagnosis_right"] else f"no, expected {x['expected_signature']}"
        out.append(f"| {x['title']} | {x['mode']} | {_s(x['detect_s'])} | {_s(x['signature'])} ({right}) | "
                   f"{actions} | {approvals} | {_s(x['repair_s'])} | {_s(x['stage'])} | {x['lost']} | "
                   f"{'; '.join(notes)} |")
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for x in rows:
        by_mode.setdefault(x["mode"], []).append(x)
    out += ["", "## Against the targets", ""]
    for mode, xs in by_mode.items():
        det = [x["detect_s"] for x in xs if x["detect_s"] is not None]
        safe = [x for x in xs if x["safe_fix"]]
        rep = [x["repair_s"] for x in safe if x["repair_s"] is not None]
        out.append(
            f"- **{mode}**: detected {len(det)}/{len(xs)}, within 20 s {sum(1 for d in det if d <= 20)}/{len(xs)}; "
            f"diagnosis right {sum(1 for x in xs if x['diagnosis_right'])}/{len(xs)}; safe-fix faults repaired "
            f"{len(rep)}/{len(safe)}, within 60 s {sum(1 for v in rep if v <= 60)}/{len(safe)}; destructive "
            f"actions without approval {sum(x['destructive_without_approval'] for x in xs)}; ACKed messages "
            f"undelivered when the scenario ended {sum(x['lost'] for x in xs)}.")
    return "\n".join(out) + "\n"
