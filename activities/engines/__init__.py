"""Interface-engine adapters (one per engine kind) behind the `EngineAdapter` protocol in base.py."""

from __future__ import annotations

from typing import Any

from activities.engines.base import EngineAdapter, EngineError
from infra.config import Engine


def build_adapter(engine: Engine, **deps: Any) -> EngineAdapter:
    """The adapter for one `engines:` entry. deps: http (httpx.AsyncClient, shared), runner (Cloverleaf
    CommandRunner), pool and config (LifelineConfig, for kind lifeline). Unused deps are ignored."""
    if engine.kind == "mirth":
        from activities.engines.mirth import MirthAdapter

        return MirthAdapter(engine, http=deps.get("http"))
    if engine.kind == "rhapsody":
        from activities.engines.rhapsody import RhapsodyAdapter

        return RhapsodyAdapter(engine, http=deps.get("http"))
    if engine.kind == "cloverleaf":
        from activities.engines.cloverleaf import CloverleafAdapter

        return CloverleafAdapter(engine, runner=deps.get("runner"))
    if engine.kind == "lifeline":
        from activities.engines.lifeline import LifelineAdapter

        if deps.get("pool") is None or deps.get("config") is None:
            raise EngineError(f"engine {engine.name}: kind lifeline needs pool and config")
        return LifelineAdapter(deps["pool"], deps["config"], org=engine.org, channels=engine.channels,
                               processes=True)
    raise EngineError(f"engine {engine.name}: unknown kind {engine.kind!r}")
