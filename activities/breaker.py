"""A circuit breaker per destination, so a dead peer does not burn attempts, connections and worker slots.

closed → (N connection failures in a row) → open: sends fail fast, without connecting, until the probe time →
half-open: exactly one send goes through as the probe; success closes it, a connection failure opens it again with
the probe interval doubled (up to the maximum). A failure that proves the peer is up (an AR, a 4xx) closes it too.
The breaker lives in the worker's memory (no query on the delivery path); transitions are written to
`destination_breakers` for the API and dashboard. `reset()` (the `reconnect` action) allows a probe at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.exceptions import ApplicationError

from activities.mllp import SendError
from infra.config import Destination
from infra.store.breakers import save_breaker
from workflows.contract import CONNECTION_ERROR_CLASSES

log = logging.getLogger("lifeline.breaker")

ERR_CIRCUIT_OPEN = "circuit_open"
T = TypeVar("T")


@dataclass
class BreakerState:
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    opened_at: float | None = None  # wall clock
    next_probe_at: float = 0.0  # monotonic
    interval_s: float = 0.0
    probing: bool = False
    last_error: str = ""


class Breakers:
    """The breakers of one worker process, keyed by (org, destination)."""

    def __init__(self, pool: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.pool = pool
        self.clock = clock
        self.states: dict[tuple[str, str], BreakerState] = {}
        self.holds: dict[tuple[str, str], float] = {}  # (org, destination) -> monotonic end of a case's hold
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def held(self, org: str, destination: str) -> bool:
        """Whether a remediation case holds this destination's breaker (see hold())."""
        until = self.holds.get((org, destination))
        return until is not None and self.clock() < until

    def active(self, dest: Destination) -> bool:
        return dest.breaker.enabled or self.held(dest.org, dest.name)

    def hold(self, org: str, destination: str, seconds: float) -> None:
        """The `hold_breaker` remediation for a down or flapping peer: for `seconds` this destination's breaker is on
        even where the config leaves it off, opens on the first connection failure, and probes at the fixed probe
        interval (no doubling, so the peer's next up-window is found within one interval)."""
        self.holds[(org, destination)] = self.clock() + max(0.0, seconds)
        st = self.states.get((org, destination))
        if st is not None and st.state == "open":
            st.next_probe_at = self.clock()  # probe now: the peer may be up already

    def state(self, org: str, destination: str) -> BreakerState:
        return self.states.setdefault((org, destination), BreakerState())

    def before_send(self, dest: Destination) -> bool:
        """True when this send is the half-open probe; raises ApplicationError(circuit_open) while open."""
        if not self.active(dest):
            return False
        st = self.states.get((dest.org, dest.name))
        if st is None or st.state == "closed":
            return False
        now = self.clock()
        if st.state == "open" and now >= st.next_probe_at and not st.probing:
            st.state, st.probing = "half_open", True
            return True
        wait = max(1.0, st.next_probe_at - now) if st.state == "open" else 1.0
        raise ApplicationError(
            f"circuit open for destination {dest.name} after {st.failures} connection failures in a row "
            f"(last {st.last_error or 'unknown'}); next probe in {wait:.0f}s", ERR_CIRCUIT_OPEN,
            type=ERR_CIRCUIT_OPEN, next_retry_delay=timedelta(seconds=wait))

    async def after_send(self, dest: Destination, error_class: str | None, probe: bool) -> None:
        """Fold one send's outcome in: None = delivered; a connection error class counts against the peer."""
        if not self.active(dest):
            return
        policy = dest.breaker
        held = self.held(dest.org, dest.name)
        st = self.state(dest.org, dest.name)
        before = st.state
        if probe:
            st.probing = False
        if error_class is None or error_class not in CONNECTION_ERROR_CLASSES:
            st.failures = 0
            if st.state != "closed":
                st.state, st.opened_at, st.interval_s = "closed", None, 0.0
        else:
            st.failures += 1
            st.last_error = error_class
            if st.state == "half_open" or (st.state == "closed" and st.failures >= (1 if held else policy.failures)):
                first = policy.probe_interval.total_seconds()
                st.interval_s = (min(policy.max_probe_interval.total_seconds(), st.interval_s * 2)
                                 if st.state == "half_open" and st.interval_s and not held else first)
                st.state = "open"
                st.opened_at = st.opened_at or time.time()
                st.next_probe_at = self.clock() + st.interval_s
        if st.state != before:
            log.info("breaker %s: %s -> %s (%d connection failures, last %s)", dest.name, before, st.state,
                     st.failures, st.last_error or "-")
            await self._persist(dest, st)

    def release(self, dest: Destination, probe: bool) -> None:
        """A send that ended without an outcome (cancelled, a bug): the probe slot opens again."""
        st = self.states.get((dest.org, dest.name))
        if probe and st is not None and st.state == "half_open":
            st.state, st.probing = "open", False

    async def call(self, dest: Destination, send: Callable[[], Awaitable[T]]) -> T:
        """Run one send under the breaker."""
        probe = self.before_send(dest)
        try:
            result = await send()
        except SendError as exc:
            await self.after_send(dest, exc.error_class, probe)
            raise
        except BaseException:
            self.release(dest, probe)
            raise
        await self.after_send(dest, None, probe)
        return result

    def reset(self, org: str, destination: str) -> None:
        """Allow a probe now (the `reconnect` remediation: someone believes the peer is back)."""
        st = self.states.get((org, destination))
        if st is not None and st.state == "open":
            st.next_probe_at = self.clock()

    async def _persist(self, dest: Destination, st: BreakerState) -> None:
        if self.pool is None:
            return
        wall_probe = (datetime.now(UTC) + timedelta(seconds=max(0.0, st.next_probe_at - self.clock()))
                      if st.state == "open" else None)
        opened = datetime.fromtimestamp(st.opened_at, UTC) if st.opened_at else None
        try:
            await save_breaker(self.pool, dest.org, dest.name, st.state, st.failures, opened, wall_probe,
                               st.interval_s or None, st.last_error or None, self.worker)
        except Exception as exc:  # visibility only: a store hiccup must not fail the delivery
            log.warning("could not record breaker state of %s: %s", dest.name, type(exc).__name__)


_LIVE: weakref.WeakSet[Breakers] = weakref.WeakSet()


def new_breakers(pool: Any = None) -> Breakers:
    """The breakers of one DeliveryActivities (one per worker), registered so that reset_all() reaches them."""
    b = Breakers(pool)
    _LIVE.add(b)
    return b


def hold_all(org: str, destination: str, seconds: float) -> None:
    """Hold this destination's breaker in every breaker set of this process (the worker's hold_breaker action)."""
    for b in list(_LIVE):
        b.hold(org, destination, seconds)


def reset_all(org: str, destination: str) -> None:
    """Allow a probe now in every breaker of this process (the worker's reconnect action)."""
    for b in list(_LIVE):
        b.reset(org, destination)
