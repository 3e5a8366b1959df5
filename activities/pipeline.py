"""Routing, transform steps and rendering as one pure pipeline, shared by the dispatcher, the deliver activity,
and the dry run (which must show exactly what delivery would do)."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any

from infra.config import Channel, Destination, LifelineConfig, Route, RouteWhen
from interop.errors import InteropError
from interop.message import Message, parse
from interop.transform import StepResult, TransformError, TransformOutcome, run_steps


def _matches(patterns: list[str] | None, value: str) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def when_holds(w: RouteWhen, message_type: str, sending_app: str, sending_facility: str,
               message: Message | None) -> bool:
    """A route's `when` (message type, sender, field values); field tests need the parsed message."""
    if not (_matches(w.message_type, message_type) and _matches(w.sending_application, sending_app)
            and _matches(w.sending_facility, sending_facility)):
        return False
    if w.fields:
        if message is None:
            return False
        return all(message.get(path) in ([want] if isinstance(want, str) else want) for path, want in w.fields.items())
    return True


def route_for(channel: Channel, destination: str, message: Message) -> Route | None:
    """The route whose steps apply to this message and destination: the first matching rule naming it."""
    for r in channel.routes:
        if r.to == destination and when_holds(r.when, message.message_type, message.sending_application,
                                               message.sending_facility, message):
            return r
    return None


def transform(config: LifelineConfig, channel: str, destination: str, org: str, message: Message, *,
              trace: bool = False) -> TransformOutcome:
    """Run the route's steps (from `config`, the version the delivery is pinned to)."""
    ch = config.channel(channel)
    r = route_for(ch, destination, message) if ch is not None else None
    if r is None or not r.steps:
        return TransformOutcome(text=message.to_er7())
    return run_steps(message.to_er7(), r.steps, config.tables_for(org), trace=trace)


def render(dest: Destination, message: Message, message_id: str = "") -> str:
    """What the destination receives, as text: ER7 for MLLP and files, the FHIR bundle or webhook payload as JSON."""
    if dest.mllp is not None:
        from activities.delivery import render_er7

        return render_er7(message, dest)
    if dest.fhir is not None:
        from interop.fhir import to_fhir_bundle

        return json.dumps(to_fhir_bundle(message).bundle, indent=1)
    if dest.webhook is None:
        return message.to_er7()
    payload = {"message_id": message_id, "destination": dest.name, "message_type": message.message_type,
               "control_id": message.control_id, "version": message.version, "hl7": message.to_er7()}
    return json.dumps(payload, indent=1)


@dataclass
class DestinationPlan:
    """What would happen to one message at one destination (the dry run's answer, per destination)."""

    destination: str
    routed: bool
    reason: str = ""
    kind: str = ""
    filtered: str | None = None
    filtered_by: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    output: str | None = None  # after the steps, ER7
    rendered: str | None = None  # what the destination would receive
    error: str | None = None


def plan(config: LifelineConfig, channel: Channel, message: Message) -> list[DestinationPlan]:
    """Routing decision, step-by-step transform and rendering for every destination the channel names."""
    seen: list[str] = []
    plans: list[DestinationPlan] = []
    for r in channel.routes:
        if r.to in seen:
            continue
        seen.append(r.to)
        chosen = route_for(channel, r.to, message)
        if chosen is None:
            plans.append(DestinationPlan(r.to, False, reason="no route's `when` matches"))
            continue
        dest = config.destination(r.to)
        if dest is None:
            plans.append(DestinationPlan(r.to, False, reason="destination is not configured"))
            continue
        idx = channel.routes.index(chosen)
        p = DestinationPlan(r.to, True, reason=f"routes[{idx}] matches", kind=dest.kind)
        try:
            outcome = transform(config, channel.name, r.to, channel.org, message, trace=True)
            p.steps, p.output = outcome.steps, outcome.text
            if outcome.filtered is not None:
                p.filtered, p.filtered_by = outcome.filtered, outcome.filtered_by
            else:
                p.rendered = render(dest, parse(outcome.text))
        except TransformError as exc:
            p.error = str(exc)
        except InteropError as exc:
            p.error = f"cannot render for {dest.kind}: {exc}"
        plans.append(p)
    return plans


def plan_dict(p: DestinationPlan) -> dict[str, Any]:
    return {"destination": p.destination, "routed": p.routed, "reason": p.reason, "kind": p.kind,
            "filtered": p.filtered, "filtered_by": p.filtered_by, "error": p.error, "output": p.output,
            "rendered": p.rendered,
            "steps": [{"index": s.index, "step": s.step, "applied": s.applied, "diff": s.diff} for s in p.steps]}
