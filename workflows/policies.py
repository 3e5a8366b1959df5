"""Named retry policies; non-retryable error types come from the contract the raising code uses."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Bookkeeping against our own PostgreSQL: keep trying (an outage of the store must not lose the outcome).
STORE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=30))

# The flow monitor runs every few seconds: a failed snapshot is retried briefly, then the next run tries again.
MONITOR_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                            maximum_interval=timedelta(seconds=5), maximum_attempts=3)
