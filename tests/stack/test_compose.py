"""docker-compose.yml, the production shape, checked without a docker engine.

The file must validate against the Compose Specification schema (tests/data/compose-spec.json, see the README
there), run only real `lifeline` subcommands, take every secret from the environment with no default, wire
`depends_on` to services that exist, and register the search attributes Lifeline's workflows use.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft201909Validator

from infra.devstack import SEARCH_ATTRIBUTES
from workers.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

LIFELINE_SERVICES = {"migrate", "worker", "dispatcher", "listener", "poller", "api"}
ONE_SHOT = {"migrate", "temporal-schema", "temporal-setup"}
REQUIRED_SECRETS = {"LIFELINE_JWT_SECRET", "LIFELINE_STORE_KEY", "LIFELINE_CODEC_KEY"}
# `${NAME<modifier>}` not preceded by another `$` (`$${...}` is an escaped, container-side variable).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PWD|TOKEN|_KEY)$")


@pytest.fixture(scope="module")
def text() -> str:
    return COMPOSE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict) and svcs
    return svcs


@pytest.fixture(scope="module")
def validator() -> Draft201909Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # The file declares draft 2019-09 under a URI jsonschema does not recognise, so say it explicitly.
    assert "2019-09" in schema["$schema"]
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def lifeline_subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def schema_errors(validator: Draft201909Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in validator.iter_errors(doc)]


# --- the Compose Specification ---------------------------------------------------------------------------


def test_valid_against_the_compose_specification(validator: Draft201909Validator, compose: dict[str, Any]) -> None:
    assert schema_errors(validator, compose) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["services"]["api"].update(imgae="typo"),
        lambda d: d["services"]["worker"]["depends_on"]["migrate"].update(condition="service_done"),
        lambda d: d["services"]["postgres"]["healthcheck"].update(interval=5),
        lambda d: d.update(servicez={}),
    ],
    ids=["unknown-service-key", "bad-depends-on-condition", "bad-healthcheck-type", "unknown-top-level-key"],
)
def test_the_schema_really_rejects_mistakes(validator: Draft201909Validator, compose: dict[str, Any],
                                            break_it: Any) -> None:
    broken = copy.deepcopy(compose)
    break_it(broken)
    assert schema_errors(validator, broken), "the schema accepted a broken compose file"


# --- Lifeline's processes ---------------------------------------------------------------------------------


def test_every_lifeline_process_is_a_real_subcommand(services: dict[str, dict[str, Any]]) -> None:
    known = lifeline_subcommands()
    built = {name for name, svc in services.items() if "build" in svc}
    assert built == LIFELINE_SERVICES
    for name in sorted(built):
        svc = services[name]
        assert "entrypoint" not in svc, f"{name}: must keep the image's `lifeline` entrypoint"
        cmd = words(svc.get("command") or [])
        assert cmd, f"{name}: no command"
        assert cmd[0] in known, f"{name}: `lifeline {cmd[0]}` is not a subcommand of workers.cli ({sorted(known)})"
        assert cmd[0] == name, f"service {name} runs `lifeline {cmd[0]}`"


def test_dockerfile_entrypoint_and_default_command() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    cmd = re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert [json.loads(e) for e in entry] == [["lifeline"]]
    assert [json.loads(c) for c in cmd] == [["api"]]
    assert json.loads(cmd[0])[0] in lifeline_subcommands()
    assert re.search(r"^USER\s+(?!root\b|0\b)\S+", text, re.M), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK\b.*\n?.*/healthz", text, re.M)
    assert re.search(r"^EXPOSE\s+.*\b8000\b.*\b2575\b", text, re.M)


def test_lifeline_processes_run_in_production_with_their_config(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(LIFELINE_SERVICES):
        svc = services[name]
        env = environment(svc)
        assert env.get("LIFELINE_ENVIRONMENT") == "production", name
        for var in ("LIFELINE_DATABASE_URL", "LIFELINE_TEMPORAL_ADDRESS", "LIFELINE_TEMPORAL_NAMESPACE",
                    "LIFELINE_CONFIG", *sorted(REQUIRED_SECRETS)):
            assert env.get(var), f"{name}: {var} is not set"
        assert env["LIFELINE_DATABASE_URL"].startswith("postgresql://"), name
        mounts = [INTERPOLATION.sub("HOST", v).split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)]
        assert env["LIFELINE_CONFIG"] in mounts, f"{name}: {env['LIFELINE_CONFIG']} is not mounted"
        expected = "no" if name in ONE_SHOT else "unless-stopped"
        assert svc.get("restart") == expected, f"{name}: restart {svc.get('restart')!r}, expected {expected!r}"


def test_published_ports(services: dict[str, dict[str, Any]]) -> None:
    def targets(svc: dict[str, Any]) -> set[str]:
        return {str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])}

    assert "8000" in targets(services["api"])
    assert "2575" in targets(services["listener"])
    assert "8080" in targets(services["temporal-ui"])
    assert any(str(p).startswith("${TEMPORAL_UI_PORT:-8233}:") for p in services["temporal-ui"]["ports"])
    for internal in ("postgres", "temporal"):
        assert not services[internal].get("ports"), f"{internal} must not be published on the host"


# --- secrets ----------------------------------------------------------------------------------------------


def test_every_secret_is_required_and_never_defaulted(text: str) -> None:
    seen = set()
    for m in INTERPOLATION.finditer(text):
        name, modifier = m.group(1), m.group(2)
        if SECRET_NAME.search(name):
            seen.add(name)
            assert re.fullmatch(r":\?\S.*", modifier), f"${{{name}{modifier}}}: a secret must be ${{{name}:?message}}"
    assert REQUIRED_SECRETS | {"POSTGRES_PASSWORD"} <= seen


def test_no_secret_is_written_in_the_file(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for var, value in environment(svc).items():
            if SECRET_NAME.search(var):
                refs = INTERPOLATION.findall(value)
                assert refs and all(mod.startswith(":?") for _, mod in refs), f"{name}: {var} has a literal value"


def test_env_example_documents_every_variable(text: str) -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    used = {m.group(1) for m in INTERPOLATION.finditer(text)}
    assert used - documented == set(), "variables used in docker-compose.yml but not in .env.example"


# --- wiring -----------------------------------------------------------------------------------------------


def test_depends_on_names_existing_services_with_sound_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name
            condition = spec.get("condition")
            target = services[dep]
            if condition == "service_healthy":
                hc = target.get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), f"{name} waits for {dep} to be healthy: no healthcheck"
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOT and target.get("restart") == "no", f"{dep} is not a one-shot job"
            else:
                pytest.fail(f"{name} -> {dep}: use service_healthy or service_completed_successfully, not {condition}")


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        for dep in services[name].get("depends_on") or {}:
            visit(dep, (*path, name))
        done.add(name)

    for name in services:
        visit(name, ())


def test_lifeline_processes_wait_for_their_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in sorted(LIFELINE_SERVICES - {"migrate"}):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["temporal-setup"]["condition"] == "service_completed_successfully", name
        assert deps["temporal"]["condition"] == "service_healthy", name


def test_temporal_persists_in_the_same_postgres(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(words(services["postgres"]["healthcheck"]["test"]))
    for name in ("temporal", "temporal-schema"):
        env = environment(services[name])
        assert (env["DB"], env["POSTGRES_SEEDS"]) == ("postgres12", "postgres"), name
        assert (env["DBNAME"], env["VISIBILITY_DBNAME"]) == ("temporal", "temporal_visibility"), name
    script = " ".join(words(services["temporal-schema"]["command"]))
    assert "temporal_visibility" in script and "update-schema" in script


def test_search_attributes_are_registered(services: dict[str, dict[str, Any]]) -> None:
    script = "\n".join(words(services["temporal-setup"]["command"]))
    created = dict(re.findall(r"search-attribute create\b[^\n]*?--name\s+(\w+)\s+--type\s+(\w+)", script))
    assert created == SEARCH_ATTRIBUTES


def test_temporal_ui_decodes_through_the_lifeline_codec(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["temporal-ui"])
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TEMPORAL_CODEC_ENDPOINT"].endswith("/api/codec")
    assert env.get("TEMPORAL_CORS_ORIGINS")
    api_env = environment(services["api"])
    assert "TEMPORAL_UI_PUBLIC_URL" in api_env["LIFELINE_CORS_ORIGINS"], "the API must allow the UI's origin"
