"""ReplayWorkflow: re-deliver dead letters, each as a new DeliveryWorkflow linked to the original."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from workflows.contract import (
        QUERY_PROGRESS,
        SA_CHANNEL,
        SA_DESTINATION,
        SA_MESSAGE_TYPE,
        SA_STATUS,
        PrepareReplayInput,
        PrepareReplayResult,
        ReplayInput,
        ReplayItem,
        ReplayProgress,
    )
    from workflows.policies import STORE_RETRY

_KEYS = {k: SearchAttributeKey.for_keyword(k) for k in (SA_CHANNEL, SA_DESTINATION, SA_MESSAGE_TYPE, SA_STATUS)}

# Children in flight at once; items come sorted by lane order so a lane's head goes first.
MAX_PARALLEL = 20


@workflow.defn(name="ReplayWorkflow")
class ReplayWorkflow:
    def __init__(self) -> None:
        self._progress = ReplayProgress()

    @workflow.query(name=QUERY_PROGRESS)
    def progress(self) -> ReplayProgress:
        return self._progress

    @workflow.run
    async def run(self, inp: ReplayInput) -> ReplayProgress:
        self._progress.org_id = inp.org_id
        prepared = await workflow.execute_activity(
            "prepare_replay",
            PrepareReplayInput(inp.org_id, inp.dead_letter_ids, workflow.info().workflow_id, inp.requested_by,
                               inp.with_current_config),
            start_to_close_timeout=timedelta(seconds=60), retry_policy=STORE_RETRY,
            result_type=PrepareReplayResult,
        )
        p = self._progress
        p.total = len(prepared.items)
        lanes_seen: set[tuple[str, str | None]] = set()
        batch: list[ReplayItem] = []
        for item in prepared.items:
            # Items of one lane run one after another: a later member must not overtake the head.
            key = (item.delivery.destination, item.lane) if item.lane is not None else None
            if len(batch) >= MAX_PARALLEL or (key is not None and key in lanes_seen):
                await self._run_batch(batch)
                batch, lanes_seen = [], set()
            batch.append(item)
            if key is not None:
                lanes_seen.add(key)
        await self._run_batch(batch)
        return p

    async def _run_batch(self, batch: list[ReplayItem]) -> None:
        import asyncio

        async def one(item: ReplayItem) -> None:
            self._progress.started += 1
            self._progress.workflow_ids.append(item.workflow_id)
            try:
                await workflow.execute_child_workflow(
                    "DeliveryWorkflow", item.delivery, id=item.workflow_id,
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    # The same search attributes the dispatcher gives a first delivery, so searches find replays.
                    search_attributes=_search_attributes(item),
                    static_summary=f"replay of {item.delivery.message_id} → {item.delivery.destination}",
                )
                self._progress.delivered += 1
            except ChildWorkflowError:
                self._progress.failed += 1

        await asyncio.gather(*(one(i) for i in batch))


def _search_attributes(item: ReplayItem) -> TypedSearchAttributes:
    d = item.delivery
    values = {SA_CHANNEL: d.channel, SA_DESTINATION: d.destination, SA_MESSAGE_TYPE: d.message_type,
              SA_STATUS: "delivering"}
    return TypedSearchAttributes([SearchAttributePair(_KEYS[k], v) for k, v in values.items()])
