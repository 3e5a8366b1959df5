"""The chaos report as markdown."""

from __future__ import annotations

from typing import Any


def _s(x: Any) -> str:
    return "–" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def render_markdown(r: dict[str, Any]) -> str:
    t = r["totals"]
    o = r["options"]
    load = r["load"]
    drain_note = ("" if r.get("drain_complete", True) else
                  f"**The drain did not complete within {o['drain_timeout']:g} s: 'lost' counts messages not yet "
                  "delivered when the harness stopped.** ")
    out = [
        "# Lifeline chaos run", "",
        f"Started {r['started_at']} with `python -m bench.chaos --messages {o['messages']} "
        f"--kills {o['kills_per_process']}` (seed {o['seed']}, {o['senders']} python-hl7 senders offering "
        f"{o['rate']:g} msg/s; A01 → `ordered` (FIFO per PID-3.1, one lane per sender), A08 → `unordered`; "
        "python-hl7 MLLP servers downstream).",
        f"Machine: {load['nproc']} cores shared with other work; load average at start {load['loadavg_at_start']}, "
        f"at end {load['loadavg_at_end']}.", "",
        f"**{'PASS' if r['ok'] else 'FAIL'}**: {t['acked']} messages ACKed (AA), {t['delivered']} delivered, "
        f"**{t['lost']} lost**, {t['duplicates']} duplicates at the peers "
        f"({len(t.get('unexplained_duplicates', []))} not explained by a worker kill), **{t['order_violations']} order "
        f"violations**; {t['kills']} kills -9 ({', '.join(f'{v} ×{n}' for v, n in t['kills_by_victim'].items())}); "
        f"{t['ae_answers']} AE answers and {t['resends']} resends by the senders while servers were away. "
        f"{drain_note}Stream {r['stream_seconds']} s, everything delivered {r['drained_seconds']} s after the first"
        f" send "
        f"(ACK → delivery p50 {_s(t['ack_to_delivery_s']['p50'])} s, p95 {_s(t['ack_to_delivery_s']['p95'])} s, "
        f"max {_s(t['ack_to_delivery_s']['max'])} s: the backlog built while servers were away).", "",
        "Per kill (a kill's window runs to the next kill; messages are counted by when they were ACKed). "
        "back = the supervisor shows it running and healthy with a new pid; first ACK = first AA of a message "
        "first sent after the kill; first delivery = first delivery at a peer once it is back; "
        "recover = the largest of the three.", "",
        "| # | victim | at (s) | back (s) | first ACK (s) | first delivery (s) | recover (s) | ACKed | delivered "
        "| lost | duplicates | order violations | AE answers | resends |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, k in enumerate(r["kills"], 1):
        out.append(f"| {i} | {k['victim']} | {_s(k['at'])} | {_s(k['back_s'])} | {_s(k['first_ack_s'])} | "
                   f"{_s(k['first_delivery_s'])} | {_s(k['recover_s'])} | {k['acked']} | {k['delivered']} | "
                   f"{k['lost']} | {k['duplicates']} | {k['order_violations']} | {k['ae_answers']} | "
                   f"{k['resends']} |")
    b = r.get("before_first_kill") or {}
    out += ["", f"Before the first kill: {b.get('acked', 0)} ACKed, {b.get('lost', 0)} lost, "
            f"{b.get('duplicates', 0)} duplicates.", "",
            "Worst recovery per victim (s): " + ", ".join(f"{v} {_s(s)}" for v, s in t["max_recover_s"].items()),
            "", f"Restarts counted by the supervisor at the end: {r['restarts']}."]
    return "\n".join(out) + "\n"
