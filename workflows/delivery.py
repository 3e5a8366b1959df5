"""DeliveryWorkflow: one message to one destination, retried by policy, dead-lettered when it cannot succeed."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.contract import (
        ERR_DELIVERY_FAILED,
        NON_RETRYABLE_SEND_ERRORS,
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


@workflow.defn(name="DeliveryWorkflow")
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
        retry = RetryPolicy(
            initial_interval=timedelta(seconds=inp.initial_interval_s),
            backoff_coefficient=inp.backoff,
            maximum_interval=timedelta(seconds=inp.maximum_interval_s),
            maximum_attempts=inp.maximum_attempts,
            non_retryable_error_types=NON_RETRYABLE_SEND_ERRORS,
        )
        try:
            result = await workflow.execute_activity(
                "deliver",
                DeliverActivityInput(inp.message_id, inp.destination, inp.org_id, workflow.info().workflow_id),
                start_to_close_timeout=timedelta(seconds=inp.attempt_timeout_s),
                # The activity heartbeats during a slow send: a killed worker costs seconds, not the attempt timeout.
                heartbeat_timeout=timedelta(seconds=HEARTBEAT_TIMEOUT_S),
                retry_policy=retry,
                result_type=DeliverActivityResult,
            )
        except ActivityError as err:
            cause = err.cause
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
        status.state, status.attempts = ("filtered" if result.filtered else "delivered"), result.attempts
        workflow.upsert_search_attributes([STATUS_KEY.value_set(status.state)])
        return status
