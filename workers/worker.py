"""The Temporal worker process: every workflow and activity, with their clients built once."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.delivery import DeliveryActivities
from activities.mllp import MllpSender
from infra.config import LifelineConfig
from infra.crypto import Cipher, data_converter
from infra.db import create_pool
from infra.settings import Settings
from workflows.delivery import DeliveryWorkflow
from workflows.replay import ReplayWorkflow

log = logging.getLogger("lifeline.worker")

WORKFLOWS: Sequence[type] = (DeliveryWorkflow, ReplayWorkflow)


def activities_for(delivery: DeliveryActivities) -> list[Any]:
    return [delivery.deliver, delivery.dead_letter, delivery.prepare_replay]


async def connect_temporal(settings: Settings) -> Client:
    cipher = Cipher(settings.codec_key_id, settings.key("codec_key"))
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                data_converter=data_converter(cipher))


def build_worker(client: Client, task_queue: str, delivery: DeliveryActivities, **kwargs: Any) -> Worker:
    return Worker(client, task_queue=task_queue, workflows=list(WORKFLOWS), activities=activities_for(delivery),
                  max_concurrent_activities=kwargs.pop("max_concurrent_activities", 200), **kwargs)


async def run_worker(settings: Settings, config: LifelineConfig) -> None:
    pool = await create_pool(settings.database_url, min_size=2, max_size=settings.database_pool_max)
    client = await connect_temporal(settings)
    store_cipher = Cipher(settings.store_key_id, settings.key("store_key"))
    async with httpx.AsyncClient() as http:
        mllp = MllpSender()
        delivery = DeliveryActivities(pool, store_cipher, config, mllp, http)
        worker = build_worker(client, settings.task_queue, delivery)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("worker polling task queue %s on %s", settings.task_queue, settings.temporal_address)
        async with worker:
            await stop.wait()
        await mllp.close()
    await pool.close()
