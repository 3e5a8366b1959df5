"""DeliveryWorkflow: one message to one destination, retried by policy, dead-lettered when it cannot succeed."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from workflows.contract import (
        ERR_DELIVERY_FAILED,
        NON_RETRYABLE_SEND_ERRORS,
        PATCH_LOCAL_FIRST,
        QUERY_STATUS,
        SA_STATUS,
        DeadLetterInput,
        DeliverActivityInput,
        DeliverActivityResult,
        DeliveryInput,
        DeliveryStatus,
    )
    from workflows.policies import STORE_RETRY

STATUS_KEY = SearchAttributeKey.for_keyword(SA_STATUS)
HEARTBEAT_TIMEOUT_S = 10.0


# Not sandboxed: one run per message, and a sandbox per run (module re-imports) costs more CPU than the delivery
# itself; the code imports only the side-effect-free contract, and tests/replay guards its determinism.
@workflow.defn(name="DeliveryWorkflow", sandboxed=False)
class DeliveryWorkflow:
    def __init__(self) -> None:
        self._status: DeliveryStatus | None = None

    @workflow.query(name=QUERY_STATUS)
    def status(self) -> DeliveryStatus | None:
        return self._status

    @workflow.run
    async def run(self, inp: DeliveryInput) -> DeliveryStatus:
        status = DeliveryStatus(inp.message_id, inp.destination)
        self._status = status
        act_input = DeliverActivityInput(inp.message_id, inp.destination, inp.org_id, workflow.info().workflow_id)
        timeout = timedelta(seconds=inp.attempt_timeout_s)
        interval = timedelta(seconds=inp.initial_interval_s)
        done = 0  # attempts made on the fast path
        result: DeliverActivityResult | None = None
        failure: FailureError | None = None
        if inp.local_first and workflow.patched(PATCH_LOCAL_FIRST):
            # Fast path: the first attempt runs as a local activity in the workflow task (no activity task, no
            # second workflow task). Its timeout is the destination's whole attempt budget, never shorter: a
            # peer that is slow to ACK must not be cut off and sent the message again by the fallback.
            try:
                result = await workflow.execute_local_activity(
                    "deliver", act_input, start_to_close_timeout=timeout,
                    retry_policy=RetryPolicy(maximum_attempts=1, non_retryable_error_types=NON_RETRYABLE_SEND_ERRORS),
                    result_type=DeliverActivityResult)
            except FailureError as err:
                # A local activity's failure may arrive unwrapped (its ApplicationError or TimeoutError itself).
                if isinstance(err, CancelledError):
                    raise
                done = 1
                if _non_retryable(err) or inp.maximum_attempts == 1:
                    failure = err
                else:
                    # The destination's backoff from here on: the wait before attempt 2, then the regular
                    # activity's policy continues the series (initial x backoff, ...) with the attempts left.
                    await workflow.sleep(_retry_delay(err) or interval)
                    interval = timedelta(seconds=min(inp.initial_interval_s * inp.backoff, inp.maximum_interval_s))
        if result is None and failure is None:
            retry = RetryPolicy(
                initial_interval=interval,
                backoff_coefficient=inp.backoff,
                maximum_interval=timedelta(seconds=inp.maximum_interval_s),
                maximum_attempts=max(inp.maximum_attempts - done, 1) if inp.maximum_attempts else 0,
                non_retryable_error_types=NON_RETRYABLE_SEND_ERRORS,
            )
            if done:
                act_input = DeliverActivityInput(inp.message_id, inp.destination, inp.org_id,
                                                 workflow.info().workflow_id, attempt_offset=done)
            try:
                result = await workflow.execute_activity(
                    "deliver", act_input, start_to_close_timeout=timeout,
                    # The activity heartbeats during a slow send: a killed worker costs seconds, not the attempt
                    # timeout.
                    heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT_S),
                    retry_policy=retry,
                    result_type=DeliverActivityResult,
                )
            except ActivityError as err:
                failure = err
        if failure is not None:
            await self._dead_letter(inp, status, failure)
        assert result is not None
        status.state, status.attempts = ("filtered" if result.filtered else "delivered"), result.attempts
        workflow.upsert_search_attributes([STATUS_KEY.value_set(status.state)])
        return status

    async def _dead_letter(self, inp: DeliveryInput, status: DeliveryStatus, err: FailureError) -> None:
        cause = _cause(err)
        if isinstance(cause, ApplicationError):
            error_type = cause.type or "Unknown"
            detail = cause.details[0] if cause.details else None
            if isinstance(detail, str) and detail != error_type:
                error_type = f"{error_type}:{detail}"
        else:
            error_type = type(cause).__name__ if cause is not None else "Unknown"
        reason = str(cause) if cause is not None else str(err)
        await workflow.execute_activity(
            "dead_letter",
            DeadLetterInput(inp.message_id, inp.destination, inp.org_id, error_type, reason),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )
        status.state, status.error = "dead_lettered", reason
        workflow.upsert_search_attributes([STATUS_KEY.value_set("dead_lettered")])
        raise ApplicationError(f"dead-lettered after delivery failure ({error_type}): {reason}",
                               type=ERR_DELIVERY_FAILED, non_retryable=True) from None


def _cause(err: FailureError) -> BaseException | None:
    return err.cause if isinstance(err, ActivityError) else err


def _non_retryable(err: FailureError) -> bool:
    cause = _cause(err)
    return isinstance(cause, ApplicationError) and (cause.non_retryable or cause.type in NON_RETRYABLE_SEND_ERRORS)


def _retry_delay(err: FailureError) -> timedelta | None:
    """The delay the failed attempt asked for (an HTTP Retry-After), if any."""
    cause = _cause(err)
    return cause.next_retry_delay if isinstance(cause, ApplicationError) else None
