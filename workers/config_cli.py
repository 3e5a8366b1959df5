"""`lifeline dry-run FILE --channel C` and `lifeline config apply FILE` / `lifeline config export`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from infra.config import ConfigError, LifelineConfig, load_config
from infra.settings import Settings
from workers.tools import COMMANDS


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides["config"] = args.config
    return Settings(**overrides)


async def _live_config(settings: Settings) -> tuple[LifelineConfig, dict[str, int]]:
    """The newest stored versions (read only: nothing is bootstrapped or written)."""
    from infra.db import create_pool
    from infra.live import merge
    from infra.store import config as store

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        rows = await store.current_versions(pool)
    finally:
        await pool.close()
    if not rows:
        raise ConfigError("database", [("", "no configuration version is stored yet (start Lifeline once, or "
                                            "`lifeline config apply FILE`)")])
    return merge({r.org_id: r.document for r in rows}), {r.org_id: r.version for r in rows}


def cmd_dry_run(args: argparse.Namespace) -> int:
    from activities.pipeline import plan, plan_dict
    from interop.errors import InteropError
    from interop.message import parse

    settings = _settings(args)
    if args.live:
        config, versions = asyncio.run(_live_config(settings))
    else:
        config, versions = load_config(settings.config), {}
    channel = config.channel(args.channel)
    if channel is None:
        print(f"lifeline: no channel named {args.channel!r}", file=sys.stderr)
        return 2
    try:
        message = parse(Path(args.file).read_bytes().decode("utf-8", errors="replace"))
    except (OSError, InteropError) as exc:
        print(f"lifeline: {args.file}: {exc}", file=sys.stderr)
        return 2
    plans = plan(config, channel, message)
    if args.json:
        print(json.dumps({"channel": channel.name, "config_version": versions.get(channel.org),
                          "destinations": [plan_dict(p) for p in plans]}, indent=1))
        return 0 if all(p.error is None for p in plans) else 1
    source = f"version {versions[channel.org]}" if channel.org in versions else str(settings.config)
    print(f"channel {channel.name} ({source}): {message.message_type} {message.control_id!r}")
    for p in plans:
        if not p.routed:
            print(f"\n== {p.destination}: not routed ({p.reason})")
            continue
        print(f"\n== {p.destination} ({p.kind}): routed, {p.reason}")
        for s in p.steps:
            print(f"  steps[{s.index}] {s.step}: {'applied' if s.applied else 'skipped (when)'}")
            for line in s.diff:
                print(f"      {line}")
        if p.filtered is not None:
            print(f"  FILTERED by {p.filtered_by}: {p.filtered}")
        if p.error is not None:
            print(f"  ERROR: {p.error}")
        if p.rendered is not None:
            print("  rendered:")
            for line in p.rendered.replace("\r", "\n").splitlines():
                print(f"    {line}")
    print("\nnothing was stored or sent")
    return 0 if all(p.error is None for p in plans) else 1


def _configure_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a sample HL7 v2 message")
    p.add_argument("--channel", required=True)
    p.add_argument("--live", action="store_true", help="use the newest stored version instead of the file")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


async def _apply(settings: Settings, config: LifelineConfig, file: str, only: str | None,
                 comment: str) -> list[tuple[str, int | None]]:
    from activities.store import audit
    from infra.db import create_pool
    from infra.live import merge, org_document, orgs_of
    from infra.store import config as store

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    actor = f"cli:{getpass.getuser()}"
    out: list[tuple[str, int | None]] = []
    try:
        current = {r.org_id: r.document for r in await store.current_versions(pool)}
        orgs = [only] if only else orgs_of(config)
        documents = {org: org_document(config, org) for org in orgs}
        merge({**current, **documents})  # the orgs together must still be valid (ports, ...)
        for org, document in documents.items():
            if current.get(org) == document:
                out.append((org, None))
                continue
            row = await store.add_version(pool, org, document, actor, comment=comment or f"applied {file}")
            assert row is not None
            await audit(pool, org_id=org, actor=actor, action="config.apply", subject=f"config:{row.version}",
                        detail={"version": row.version, "file": file, "comment": comment})
            out.append((org, row.version))
    finally:
        await pool.close()
    return out


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "apply":
        if args.file is None:
            print("lifeline: config apply needs FILE", file=sys.stderr)
            return 2
        config = load_config(args.file)
        for org, version in asyncio.run(_apply(settings, config, str(args.file), args.org, args.comment or "")):
            print(f"{org}: " + (f"version {version}" if version is not None else "unchanged"))
        return 0
    from infra.live import dump

    config, versions = asyncio.run(_live_config(settings))
    if args.org:
        from infra.live import org_document

        document: dict[str, Any] = org_document(config, args.org)
        header = f"# org {args.org}, configuration version {versions.get(args.org)}\n"
    else:
        document = dump(config)
        header = "# configuration versions: " + ", ".join(f"{o} {v}" for o, v in sorted(versions.items())) + "\n"
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if args.file is not None:
        Path(args.file).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _configure_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["apply", "export"])
    p.add_argument("file", nargs="?", type=Path, help="apply: the file to store; export: where to write (stdout)")
    p.add_argument("--org", help="only this org")
    p.add_argument("--comment", help="why (kept with the version and in the audit log)")


async def _replay(settings: Settings, org: str, ids: list[int] | None, destination: str | None,
                  with_current_config: bool, reason: str) -> tuple[str, list[int]]:
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from infra.db import create_pool
    from infra.store.audit import append as audit
    from infra.store.deliveries import open_dead_letter_ids
    from workers.worker import connect_temporal
    from workflows.contract import ReplayInput, replay_workflow_id

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        found = await open_dead_letter_ids(pool, org, ids=ids, destination=destination)
        if not found:
            return "", []
        client = await connect_temporal(settings)
        actor = f"cli:{getpass.getuser()}"
        wf_id = replay_workflow_id(f"{org}:{','.join(map(str, found))}")
        try:
            await client.start_workflow("ReplayWorkflow", ReplayInput(org, found, actor, with_current_config),
                                        id=wf_id, task_queue=settings.task_queue,
                                        static_summary=f"replay of {len(found)} dead letter(s)")
        except WorkflowAlreadyStartedError:
            pass
        await audit(pool, org_id=org, actor=actor, action="dead_letters.replay", subject=wf_id,
                    detail={"ids": found, "reason": reason, "with_current_config": with_current_config})
    finally:
        await pool.close()
    return wf_id, found


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.ids and not args.destination:
        print("lifeline: replay needs dead letter ids or --destination", file=sys.stderr)
        return 2
    wf_id, found = asyncio.run(_replay(_settings(args), args.org, args.ids or None, args.destination,
                                       args.with_current_config, args.reason or ""))
    if not found:
        print("lifeline: no open dead letter matches", file=sys.stderr)
        return 1
    how = "the current configuration version" if args.with_current_config else "their pinned configuration versions"
    print(f"{wf_id}: replaying {len(found)} dead letter(s) with {how}")
    return 0


def _configure_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", type=int, help="dead letter ids (GET /api/dead-letters)")
    p.add_argument("--destination", help="every open dead letter of this destination")
    p.add_argument("--org", default="default")
    p.add_argument("--with-current-config", action="store_true",
                   help="render with the configuration version in force now, not the one each was routed with")
    p.add_argument("--reason", help="kept in the audit log")


COMMANDS["replay"] = (cmd_replay, "re-deliver dead letters (ReplayWorkflow); --with-current-config re-renders with "
                      "today's configuration", _configure_replay)
COMMANDS["dry-run"] = (cmd_dry_run, "show what a channel's routes and steps do to a sample message; stores and "
                       "sends nothing", _configure_dry_run)
COMMANDS["config"] = (cmd_config, "configuration versions in PostgreSQL: `config apply FILE`, `config export`",
                      _configure_config)
