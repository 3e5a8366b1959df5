"""The `lifeline` command: the embedded stack (`up`) and each production process on its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from infra import tracing
from infra.config import ConfigError, LifelineConfig, load_config
from infra.devstack import StackError
from infra.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "config", None):
        overrides["config"] = args.config
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return Settings(**overrides)


def _serve(settings: Settings, process: str) -> None:
    """Start-up of a long-running process: its audit keys, and the audit summary of its cross-org transactions."""
    import os
    import socket

    from infra.store import audit_system_transactions
    from infra.store.audit import use_keys

    try:
        use_keys(settings.audit_keys())
    except RuntimeError as exc:  # no store key: this process writes no audit row (or says so when it tries)
        logging.getLogger("lifeline").warning("audit keys: %s", exc)
    audit_system_transactions(settings.system_audit_seconds, actor=f"{process}@{socket.gethostname()}:{os.getpid()}")


def _config(settings: Settings) -> LifelineConfig:
    config = load_config(settings.config)
    if settings.environment == "production":
        from infra.config import config_path
        from infra.production import config_problems

        problems = config_problems(config)
        if problems:
            raise ConfigError(str(settings.config or config_path()), problems)
    return config


def cmd_up(args: argparse.Namespace) -> int:
    import os

    from workers.up import DEFAULT_PG_PORT, PG_PORT_ENV, Supervisor

    settings = _settings(args)
    config = _config(settings)
    sup = Supervisor(settings, config, temporal_port=args.temporal_port, ui_port=args.ui_port,
                     pg_port=int(os.environ.get(PG_PORT_ENV, DEFAULT_PG_PORT)),
                     separate_dispatcher=args.separate_dispatcher)
    return sup.run()


def cmd_status(args: argparse.Namespace) -> int:
    from workers.up import print_status

    return print_status(_settings(args).data_dir.resolve(), as_json=args.json)


def cmd_migrate(args: argparse.Namespace) -> int:
    from infra.db import migrate

    settings = _settings(args)
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.worker import run_worker

    settings = _settings(args)
    _serve(settings, "worker")
    if args.with_dispatcher:
        settings = settings.model_copy(update={"worker_dispatch": True})
    asyncio.run(run_worker(settings, _config(settings)))
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from workers.dispatcher import run_dispatcher

    settings = _settings(args)
    _serve(settings, "dispatcher")
    asyncio.run(run_dispatcher(settings, _config(settings)))
    return 0


def cmd_listener(args: argparse.Namespace) -> int:
    from workers.listener import run_listeners

    settings = _settings(args)
    _serve(settings, "listener")
    asyncio.run(run_listeners(settings, _config(settings), only=args.channel))
    return 0


def cmd_poller(args: argparse.Namespace) -> int:
    from workers.poller import run_poller

    settings = _settings(args)
    _serve(settings, "poller")
    asyncio.run(run_poller(settings, _config(settings), only=args.channel))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    settings = _settings(args)
    _serve(settings, "api")
    app = create_app(settings, _config(settings), live=True)
    uvicorn.run(app, host=args.host or settings.api_host, port=args.port or settings.api_port,
                log_level=settings.log_level.lower(), access_log=False)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from api.auth import mint_token

    settings = _settings(args)
    secret = settings.jwt_secret.get_secret_value()
    if not secret:
        from workers.up import load_or_create_secrets

        secret = load_or_create_secrets(settings.data_dir.resolve())["LIFELINE_JWT_SECRET"]
    if args.action == "revoke":
        return _revoke(settings, secret, args)
    if args.action is not None or not args.role:
        print("usage: lifeline token --role ROLE [--org ORG] [--subject S] [--ttl-hours H] | "
              "lifeline token revoke TOKEN", file=sys.stderr)
        return 2
    try:
        token = mint_token(secret, subject=args.subject, org=args.org, roles=args.role,
                           ttl_seconds=int(args.ttl_hours * 3600), issuer=settings.jwt_issuer)
    except ValueError as exc:
        print(f"lifeline: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _revoke(settings: Settings, secret: str, args: argparse.Namespace) -> int:
    """Revoke a token (every API process refuses it within seconds, approvals carrying it are refused)."""
    import jwt as pyjwt

    from activities.store import audit
    from infra.db import create_pool
    from infra.store.tokens import revoke

    if not args.value:
        print("usage: lifeline token revoke TOKEN", file=sys.stderr)
        return 2
    try:
        # Expired tokens need no revocation, but revoking one is harmless; the signature must be ours.
        claims = pyjwt.decode(args.value, secret, algorithms=["HS256"], issuer=settings.jwt_issuer,
                              options={"verify_exp": False, "require": ["sub", "exp", "jti"]})
    except pyjwt.PyJWTError as exc:
        print(f"lifeline: not a Lifeline token: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            await revoke(pool, jti=str(claims["jti"]), org_id=str(claims.get("org", "default")),
                         revoked_by=args.subject, expires_at=int(claims["exp"]), reason="lifeline token revoke")
            await audit(pool, org_id=str(claims.get("org", "default")), actor=args.subject, action="token.revoke",
                        subject=str(claims["jti"]), detail={"token_subject": str(claims["sub"])})
        finally:
            await pool.close()

    asyncio.run(run())
    print(f"revoked token {claims['jti']} of {claims['sub']}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    cfg = _config(settings)
    print(f"ok: {len(cfg.channels)} channel(s), {len(cfg.destinations)} destination(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifeline", description="Self-healing HL7 v2 integration engine")
    parser.add_argument("--config", type=Path, help="channel configuration file (default ./lifeline.yaml)")
    parser.add_argument("--data-dir", type=Path, help="where the embedded stack keeps its data (.lifeline)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    up = add("up", cmd_up, "start the embedded stack: Temporal, PostgreSQL, worker, dispatcher, API, listeners")
    up.add_argument("--temporal-port", type=int, default=7233)
    up.add_argument("--ui-port", type=int, default=8233)
    up.add_argument("--separate-dispatcher", action="store_true",
                    help="run the outbox dispatcher as its own process (the production shape) instead of in the worker")
    st = add("status", cmd_status, "each process of `lifeline up`: pid, state, health, uptime, restarts")
    st.add_argument("--json", action="store_true", help="print the supervisor's status file as JSON")
    wk = add("worker", cmd_worker, "run a Temporal worker (workflows and activities)")
    wk.add_argument("--with-dispatcher", action="store_true",
                    help="also run the outbox dispatcher in this process, starting deliveries eagerly")
    add("dispatcher", cmd_dispatcher, "run the outbox dispatcher that starts delivery workflows")
    lis = add("listener", cmd_listener, "run the MLLP listeners of the configured channels")
    lis.add_argument("--channel", action="append", help="only this channel (repeatable)")
    pol = add("poller", cmd_poller, "run the file and SFTP source pollers of the configured channels")
    pol.add_argument("--channel", action="append", help="only this channel (repeatable)")
    api = add("api", cmd_api, "run the REST API (uvicorn)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    add("migrate", cmd_migrate, "apply pending database migrations")
    tok = add("token", cmd_token, "mint a bearer token (--role ...), or revoke one (token revoke TOKEN)")
    tok.add_argument("action", nargs="?", choices=["revoke"], help="revoke the TOKEN given next")
    tok.add_argument("value", nargs="?", metavar="TOKEN")
    tok.add_argument("--role", action="append",
                     choices=["admin", "operator", "oncall", "auditor", "viewer", "sender"])
    tok.add_argument("--org", default="default")
    tok.add_argument("--subject", default="cli")
    tok.add_argument("--ttl-hours", type=float, default=12)
    add("config-check", cmd_config_check, "validate the configuration file and exit")
    extra = _extra_commands()
    for name, (func, help_, configure) in extra.items():
        configure(add(name, func, help_))
    return parser


def _extra_commands() -> dict[str, tuple[Callable[[argparse.Namespace], int], str,
                                          Callable[[argparse.ArgumentParser], None]]]:
    """Commands contributed by other modules (send, demo, ...)."""
    from workers import config_cli, tools

    del config_cli  # imported for its commands: dry-run and config
    return tools.COMMANDS


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.func is not cmd_up:  # `lifeline up` only supervises; its children trace themselves
            tracing.setup(getattr(args, "command", None) or args.func.__name__.removeprefix("cmd_"))
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"lifeline: configuration error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        # A whole-settings rule (production mode) names its variables itself.
        print(f"lifeline: settings error: {f'LIFELINE_{where.upper()}: ' if where else ''}{msg}", file=sys.stderr)
        return 2
    except StackError as exc:
        print(f"lifeline: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
