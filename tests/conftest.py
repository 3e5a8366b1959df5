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
from infra.store import audit_system_transactions
from infra.store.audit import use_keys

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


@pytest.fixture(autouse=True)
def audit_keys() -> None:
    """Audit rows are chained with the test store key's derived audit key (as a process without
    LIFELINE_AUDIT_KEY does); each process sets its keys at start-up, tests here."""
    use_keys(make_settings().audit_keys())
    audit_system_transactions(None)  # a process turns the cross-org summary on at start-up; its tests, here


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
async def superuser_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The database superuser: bypasses row-level security and the audit log's triggers. For seeding rows as a
    test needs them, reading across orgs in assertions, and tampering; never for the behaviour under test."""
    p = await create_pool(db_url, min_size=1, max_size=10)
    yield p
    await p.close()


@pytest.fixture
def pool(superuser_pool: asyncpg.Pool) -> asyncpg.Pool:
    """The superuser pool under its historical name (many seeding helpers use it); new tests pick `app_pool`
    for tenant behaviour or `superuser_pool` for setup and tampering."""
    return superuser_pool


@pytest.fixture
async def app_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The application role lifeline_app, like every Lifeline process: row-level security binds it, and each store
    call must name its org. Use it wherever a test exercises tenant behaviour."""
    p = await create_pool(db_url, min_size=1, max_size=10, role="lifeline_app")
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
