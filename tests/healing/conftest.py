"""The time-skipping Temporal test server for the healing workflows (approval timeouts, settle delays, polls).

One server per test. A server shared by the session hung the full suite twice (test_oncall, then
test_approval_timeout_escalates_never_approves; each passes alone). A test that ends leaves its workflows on the
server; the likely mechanism (not proven) is that their timers fire while a later test skips time and the workflow
tasks they schedule, on a task queue no worker polls any more, keep the server from skipping again, so the later
test waits an hour of approval in real time. A fresh server per test costs little (tests/healing: 148 s, was 142 s)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.testing import WorkflowEnvironment

from infra.crypto import Cipher, data_converter
from infra.devstack import find_binary


@pytest.fixture
async def skip_env(cipher: Cipher) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"), data_converter=data_converter(cipher))
    yield env
    await env.shutdown()
