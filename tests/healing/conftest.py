"""The time-skipping Temporal test server for the healing workflows (approval timeouts, settle delays, polls)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from infra.crypto import Cipher, data_converter
from infra.devstack import find_binary


@pytest.fixture(scope="session")
async def skip_env(cipher: Cipher) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"), data_converter=data_converter(cipher))
    yield env
    await env.shutdown()
