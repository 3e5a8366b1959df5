"""The one protocol every interface-engine adapter implements (Mirth, Rhapsody, Cloverleaf, Lifeline itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# Normalised channel states; each adapter keeps the engine's own word in `raw_state`.
State = Literal["started", "stopped", "paused", "starting", "stopping", "pausing", "error", "undeployed", "unknown"]
Capability = Literal["start", "stop", "pause", "resume", "halt", "clear_queue", "restart"]


class EngineError(Exception):
    """The engine could not be reached or refused the call (transient unless a subclass says otherwise)."""


class EngineAuthError(EngineError):
    """Credentials were rejected (401/403): retrying will not help."""


class EngineNotFound(EngineError):
    """No such channel (or not deployed)."""


class EngineNotSupported(EngineError):
    """This engine has no such operation (e.g. halt on Rhapsody, clear queue on Mirth)."""


@dataclass
class EngineChannel:
    id: str
    name: str
    state: State
    raw_state: str = ""
    queued: int = 0
    received: int = 0
    sent: int = 0
    errors: int = 0
    filtered: int = 0
    detail: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class EngineAdapter(Protocol):
    kind: str
    capabilities: frozenset[str]

    async def list_channels(self) -> list[EngineChannel]: ...

    async def channel_status(self, channel_id: str) -> EngineChannel: ...

    async def start(self, channel_id: str) -> None: ...

    async def stop(self, channel_id: str) -> None: ...

    async def pause(self, channel_id: str) -> None: ...

    async def resume(self, channel_id: str) -> None: ...

    async def halt(self, channel_id: str) -> None: ...

    async def clear_queue(self, channel_id: str) -> int: ...

    async def close(self) -> None: ...
