"""Session fixtures: a real embedded PostgreSQL and a real Temporal dev server on free ports."""

from __future__ import annotations

import base64
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.testing import WorkflowEnvironment

from infra.crypto import Cipher, data_converter
from infra.db import create_pool, migrate
from infra.devstack import SEARCH_ATTRIBUTES, EmbeddedPostgres, find_binary, free_port
from infra.settings import Settings

warnings.filterwarnings("ignore", module="platformdirs")

TEST_STORE_KEY = base64.urlsafe_b64encode(b"s" * 32).decode()
TEST_CODEC_KEY = base64.urlsafe_b64encode(b"c" * 32).decode()
TEST_JWT_SECRET = "test-secret-" + "x" * 40


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "jwt_secret": TEST_JWT_SECRET, "store_key": TEST_STORE_KEY, "codec_key": TEST_CODEC_KEY,
        "dispatcher_sweep_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    base = Path(os.environ.get("LIFELINE_TEST_TMP", str(tmp_path_factory.mktemp("pg"))))
    server = EmbeddedPostgres(base / "data", free_port(), log_file=base / "postgres.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def pg_template(pg_server: EmbeddedPostgres) -> str:
    """A migrated database that each test clones (CREATE DATABASE ... TEMPLATE is fast)."""
    url = pg_server.create_database("lifeline_template")
    await migrate(url)
    return "lifeline_template"


@pytest.fixture
async def db_url(pg_server: EmbeddedPostgres, pg_template: str) -> str:
    return pg_server.create_database(f"t_{uuid.uuid4().hex[:12]}", template=pg_template)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def cipher() -> Cipher:
    return Cipher("k1", base64.urlsafe_b64decode(TEST_CODEC_KEY))


@pytest.fixture(scope="session")
def store_cipher() -> Cipher:
    return Cipher("k1", base64.urlsafe_b64decode(TEST_STORE_KEY))


@pytest.fixture(scope="session")
async def temporal_env(cipher: Cipher) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        data_converter=data_converter(cipher),
        search_attributes=[SearchAttributeKey.for_keyword(k) for k in SEARCH_ATTRIBUTES],
        dev_server_log_level="error",
    )
    yield env
    if os.environ.get("LIFELINE_RECORD_HISTORIES"):
        await record_histories(env.client)
    await env.shutdown()


HISTORIES = Path(__file__).parent / "histories"


async def record_histories(client: Client) -> None:
    """Keep one closed history per workflow type and outcome for the replay test (run the suite with
    LIFELINE_RECORD_HISTORIES=1 after a workflow change that is meant to be compatible; never overwrite)."""
    from workers.worker import WORKFLOWS

    HISTORIES.mkdir(exist_ok=True)
    for wf in WORKFLOWS:
        name = getattr(wf, "__temporal_workflow_definition").name
        for status in ("Completed", "Failed"):
            target = HISTORIES / f"{name}-{status.lower()}.json"
            if target.exists():
                continue
            query = f"WorkflowType = '{name}' AND ExecutionStatus = '{status}'"
            async for execution in client.list_workflows(query, limit=1):
                history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
                target.write_text(history.to_json())


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"
