"""The markdown view of a bench report (the JSON holds everything; this is what people read)."""

from __future__ import annotations

from typing import Any


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50']:.1f} / {p['p95']:.1f} / {p['p99']:.1f} (max {p['max']:.1f})"


def _cpu(run: dict[str, Any]) -> str:
    per = run["cpu"]["ms_per_item"]
    return f"{run['cpu']['ms_per_item_total']:.1f} ({', '.join(f'{k} {v:.1f}' for k, v in per.items())})"


def _delivery_rows(name: str, d: dict[str, Any], ratio: float | None, cpu_ratio: float | None) -> list[str]:
    s = d["stages_s"]
    stages = " → ".join(f"{k} {s[k]:.1f}s" for k in ("stored", "routed", "started", "delivered") if k in s)
    return [
        f"| {name} | {d['messages']} over {d['connections']} conns"
        + (f", {d['lanes']} lanes" if d.get("lanes") else "")
        + f" | **{d['delivered_per_s']}** | **{ratio}** | {cpu_ratio} | {_cpu(d)} | {d['acked_per_s']} "
        f"| {d['workflows_per_s'] or '—'} | {stages} |",
    ]


def render_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    c = r["ceiling"]
    ratios = r.get("ratio_to_ceiling", {})
    lines = [
        "# Lifeline delivery benchmark",
        "",
        f"Run {m['date']} with `make bench`{' --quick' if r['options'].get('quick') else ''} "
        f"({r['total_seconds']:.0f} s). Machine: {m['nproc']} cores usable (nproc), {m['cpu_model'] or 'cpu ?'}, "
        f"{m['memory_gb']} GB RAM, Python {m['python']}, {m['platform']}. Load average at start "
        f"{m['loadavg_at_start']}, at end {m.get('loadavg_at_end')} (the cores are shared: numbers are noisy).",
        "",
        "Servers as `lifeline up` runs them: embedded PostgreSQL (fsync on) and Temporal's dev server with a SQLite "
        "file (WAL, synchronous=normal), all on this machine; listener, dispatcher and worker in the bench process "
        "with the pool sizes each gets as its own process; downstream peer is python-hl7's asyncio MLLP server.",
        "",
        "## Throughput",
        "",
        f"One-step ceiling ({c.get('shape', 'regular activity')} per workflow, same server and worker options "
        f"`{c['worker_options']}`, {c['workflows']} workflows started in gathers of {c['start_batch']}): "
        f"**{r['ceiling_workflows_per_s']} workflows completed/s**, the mean of {c['workflows_per_s']}/s measured "
        f"before the delivery runs and {r['ceiling_after']['workflows_per_s']}/s after them (starts accepted at "
        f"{c['starts_per_s']}/s, activities ran at {c['activities_per_s']}/s in the first).",
        "",
        "CPU used while measuring, as % of one core: " + "; ".join(
            f"{name} " + ", ".join(f"{k} {v}%" for k, v in run["cpu"]["pct_of_one_core"].items())
            for name, run in (("ceiling", c), ("unordered delivery", r["delivery_unordered"]))) + ".",
        "",
        f"The ceiling cost **{r['ceiling_cpu_ms_per_workflow']} ms of CPU per workflow** (bench process + Temporal "
        f"server + PostgreSQL; {_cpu(c)} in the first run). On shared cores the wall-clock rates swing with the "
        "neighbours' load, so the table also gives the CPU-normalised ratio: ceiling CPU per workflow ÷ delivery "
        "CPU per message, i.e. the ratio both would reach with the same CPU.",
        "",
        f"| delivery run | size | delivered/s | ratio to ceiling (goal ≥ {r['goal_ratio']}) | CPU-normalised ratio "
        "| CPU ms per message (by process) | ACKed/s | workflows closed/s "
        "| last message per stage (s after first send) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cpu_ratios = r.get("cpu_normalised_ratio", {})
    lines += _delivery_rows("unordered", r["delivery_unordered"], ratios.get("unordered"), cpu_ratios.get("unordered"))
    if "delivery_ordered" in r:
        lines += _delivery_rows("ordered by PID-3.1", r["delivery_ordered"], ratios.get("ordered"),
                                cpu_ratios.get("ordered"))
    if "delivery_ordered_few" in r:
        lines += _delivery_rows("ordered by PID-3.1 (few patients, goal ≥ 0.6)", r["delivery_ordered_few"],
                                ratios.get("ordered_few"), cpu_ratios.get("ordered_few"))
    if "delivery_regular" in r:
        reg = r["ceiling_regular"]
        lines += _delivery_rows("unordered, regular-activity shape (before)", r["delivery_regular"], None, None)
        lines += ["", f"For comparison, the regular-activity one-step ceiling: {reg['workflows_per_s']} workflows/s, "
                  f"{reg['cpu']['ms_per_item_total']} ms CPU per workflow."]
    lines += _acceptance(r)
    u = r["delivery_unordered"]
    lines += [
        "",
        f"Unordered run details: ACK p50/p95/p99 {_ms(u['ack_ms'])} ms while the engine delivers; "
        f"stored→delivered p50 {u['stages_s']['stored_to_delivered_ms_p50']:.0f} ms, "
        f"p95 {u['stages_s']['stored_to_delivered_ms_p95']:.0f} ms; MLLP send per attempt "
        f"{u['stages_s']['mllp_send_ms_avg']} ms on average; {u['stages_s']['failed_attempts']} failed attempts; "
        f"{u['duplicates_at_peer']} duplicates at the peer.",
        "",
        "## ACK latency (send → ACK at the client, ms)",
        "",
        "| load | messages | p50 / p95 / p99 (max) | notes |",
        "|---|---|---|---|",
    ]
    st, bu = r["ack_latency"]["steady"], r["ack_latency"]["burst"]
    lines += [
        f"| steady {st['rate_per_s']:.0f} msg/s for {st['seconds']:.0f} s ({st['connections']} conns) "
        f"| {st['messages']} | {_ms(st['ack_ms'])} | send→delivered at the peer {_ms(st['send_to_delivered_ms'])} "
        f"(min {st['send_to_delivered_ms']['min']:.0f}); {st['delivered_while_sending']} delivered while sending; "
        f"{st['late_sends']} sends late by >50 ms |",
        f"| burst, {bu['connections']} conns as fast as they go | {bu['messages']} | {_ms(bu['ack_ms'])} "
        f"| {bu['acked_per_s']} ACKed/s; {bu['delivered_during_burst']} delivered during the burst |",
        "",
        "## Listener memory",
        "",
    ]
    rss = r["listener_rss"]
    lines += [
        f"`python -m workers.cli listener` as its own process: RSS {rss['rss_before_mb']} MB warm and idle, "
        f"{rss['rss_after_mb']} MB holding {rss['held_by_listener']} of {rss['connections']} idle connections "
        f"(+{rss['rss_delta_mb']} MB, {rss['kb_per_connection']} KB per connection); it still ACKed "
        f"({rss['ack_code_while_holding']}) in {rss['ack_while_holding_ms']} ms while holding them.",
        "",
        "## Interop (one core, in process)",
        "",
        "| measure | msg/s | failed |",
        "|---|---|---|",
    ]
    for key, value in r["interop"].items():
        if isinstance(value, dict):
            lines.append(f"| {key} | {value['msg_per_s']} | {value['failed']} |")
    i = r["interop"]
    lines += ["", f"Fixtures: {i['fixtures']} messages, {i['seconds_per_measure']} s per measure.", ""]
    return "\n".join(lines)


def _acceptance(r: dict[str, Any]) -> list[str]:
    lines = ["", "## Acceptance", "", "| measure | value | goal |", "|---|---|---|"]
    goals = r.get("goals", {})
    for k, v in r.get("ratio_to_ceiling", {}).items():
        lines.append(f"| {k} ÷ ceiling (wall clock; CPU-normalised {r['cpu_normalised_ratio'].get(k)}) | {v} "
                     f"| ≥ {goals.get(k, r.get('goal_ratio'))} |")
    for rate, goal in (("10", 100), ("30", 250)):
        st = r.get("steady", {}).get(rate)
        if st:
            lines.append(f"| send → delivered at {rate} msg/s for {st['seconds']:.0f} s, p50 / p95 "
                         f"| {st['send_to_delivered_ms']['p50']} / {st['send_to_delivered_ms']['p95']} ms "
                         f"| p95 ≤ {goal} ms |")
    cp = r.get("closing_peer")
    if cp:
        lines.append(f"| duplicates to hl7apy's closing MLLPServer, {len(cp['runs'])} runs of "
                     f"{cp['runs'][0]['messages']} | {cp['duplicates']} (lost {cp['lost']}, failed attempts "
                     f"{sum(x['failed_attempts'] for x in cp['runs'])}) | 0 |")
    so = r.get("scaleout")
    if so:
        lines.append(f"| scale-out 2 workers + 2 dispatchers + 2 listeners, {so['messages']} messages "
                     f"({so['ordered_lanes']} ordered lanes) | lost {so['lost']}, duplicates {so['duplicates']}, "
                     f"order violations {so['order_violations']}; {so['delivered_per_s']} delivered/s | 0, 0, 0 |")
        lines += ["", "Scale-out CPU per delivered message by process (ms): "
                  + ", ".join(f"{k} {v}" for k, v in so["cpu_ms_per_message"].items()) + "."]
    return lines


def render_soak(r: dict[str, Any]) -> str:
    s = r["soak"]
    m = r["machine"]

    def pct(d: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:+}" for k, v in d.items())

    lines = [
        "# Lifeline soak", "",
        f"Run {m['date']}: {s['seconds']:.0f} s at {s['rate_per_s']:.0f} msg/s ({s['messages']} messages, half to an "
        f"ordered destination over {s.get('ordered_lanes')} patients, half to an unordered one) through a listener and "
        "a worker with the dispatcher inside, as separate processes (the `lifeline up` shape), on the Temporal dev "
        f"server and embedded PostgreSQL. Load average at start {m['loadavg_at_start']}, at end "
        f"{m.get('loadavg_at_end')}.", "",
        f"- Delivered {s['delivered']} of {s['messages']}, duplicates {s['duplicates']}, order violations "
        f"{s.get('order_violations')}.",
        f"- Send → delivered over the whole run: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms, p99 {s.get('p99_ms')} ms; "
        f"median of the windows' p95: first quarter {s.get('p95_ms_median_first_quarter')} ms, last quarter "
        f"{s.get('p95_ms_median_last_quarter')} ms.",
        f"- RSS growth from the end of the warm-up ({s.get('warmup_s')} s) to the last sample (%): "
        f"{pct(s.get('rss_growth_pct_after_warmup', {}))}; from the first sample: "
        f"{pct(s['rss_growth_pct_first_to_last_sample'])}.",
        f"- Open delivery workflows: at most {s.get('open_workflows_max')} in any sample, "
        f"{s.get('open_workflows_last_quarter_max')} in the last quarter.",
        "- Memory columns: RSS of each Lifeline process; for the servers (temporal, postgres, with their child "
        "processes) the sum of PSS where the run recorded it (runs before 2 December 2026, 14:50 UTC summed RSS, "
        "which counts PostgreSQL's shared buffers once per backend).", "",
        "![RSS per process](rss.svg)", "", "![latency](latency.svg)", "", "![open workflows](open-workflows.svg)", "",
    ]
    if s["samples"]:
        names = list(s["samples"][0]["rss_mb"])
        lines += ["| t (s) | sent | delivered | p50 / p95 ms | open workflows | " + " | ".join(
            f"{n} MB" for n in names) + " |", "|---" * (5 + len(names)) + "|"]
        for x in s["samples"]:
            lines.append(f"| {x['t_s']} | {x['sent']} | {x['delivered']} | {x['p50_ms']} / {x['p95_ms']} | "
                         f"{x['open_workflows']} | " + " | ".join(str(x["rss_mb"].get(n)) for n in names) + " |")
    return "\n".join(lines) + "\n"
