"""Static checks of docker-compose.yml, the Dockerfile and .dockerignore: no Docker engine needed.

They parse, wire the services as the README promises, keep secrets out, and every command they run exists in the code.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

FEEDS = ("feed-0", "feed-1")  # the feed shards
OUR_SERVICES = {"migrate", "worker", "beat", *FEEDS, "flower", "simulator", "api", "maintenance"}
MONITORING = {"prometheus", "grafana", "node-exporter"}  # the `monitoring` profile
SERVICES = OUR_SERVICES | {"redis", "postgres"} | MONITORING
PROFILES = {"simulator": ["sim"], **{name: ["monitoring"] for name in MONITORING}}
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"

_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --- helpers -------------------------------------------------------------------------------------------------------


def _interpolate(value: str) -> str:
    """Resolve ${VAR:-default} to its default and any other ${VAR...} to a placeholder, as compose would."""
    out = _VAR.sub(lambda m: m["arg"] if m["op"] in (":-", "-") else "x", value)
    return out.replace("$$", "$")


def _argv(command: str | list[str]) -> list[str]:
    parts = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    return [_interpolate(p) for p in parts]


def _options(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-")]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def _dockerignored(path: str) -> bool:
    """Approximates Docker's rule: the last matching pattern wins; a matched directory covers its contents."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is missing: add pyyaml to the dev extras in pyproject.toml")
    data = yaml.safe_load(COMPOSE.read_text())  # safe_load resolves the x- anchors and << merges
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _commands(services: dict[str, dict[str, Any]], program: str) -> dict[str, list[str]]:
    found = {name: _argv(svc["command"]) for name, svc in services.items() if "command" in svc}
    return {name: argv for name, argv in found.items() if argv[0] == program}


# --- compose: shape ------------------------------------------------------------------------------------------------


def test_compose_has_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


def test_one_image_for_all_bookfeed_services(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in OUR_SERVICES}
    builds = {json.dumps(services[name]["build"], sort_keys=True) for name in OUR_SERVICES}
    assert len(images) == 1 and len(builds) == 1
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:16"


def test_beat_has_exactly_one_replica(services: dict[str, dict[str, Any]]) -> None:
    assert services["beat"]["deploy"]["replicas"] == 1


def test_worker_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "replicas" not in worker.get("deploy", {})


def test_only_flower_the_api_and_grafana_are_published_and_only_on_localhost(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert published == {
        "flower": ["127.0.0.1:5555:5555"],
        "api": ["127.0.0.1:8000:8000"],
        "grafana": ["127.0.0.1:${GRAFANA_PORT:-3000}:3000"],
    }


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    broker_and_schema = {"redis": HEALTHY, "migrate": COMPLETED}
    expected = {
        "migrate": {"postgres": HEALTHY},
        "worker": broker_and_schema,
        "beat": broker_and_schema,
        **dict.fromkeys(FEEDS, broker_and_schema),
        "flower": {"redis": HEALTHY},
        "api": broker_and_schema,
        "maintenance": broker_and_schema,
    }
    actual = {
        name: {dep: spec["condition"] for dep, spec in svc["depends_on"].items()}
        for name, svc in services.items()
        if "depends_on" in svc
    }
    assert actual == expected


def test_conditions_can_be_met(services: dict[str, dict[str, Any]]) -> None:
    for svc in services.values():
        for dep, spec in svc.get("depends_on", {}).items():
            if spec["condition"] == HEALTHY:
                assert services[dep]["healthcheck"]["test"], dep
            if spec["condition"] == COMPLETED:
                # Restarted after a clean exit, a one-shot service would never count as completed.
                assert services[dep]["restart"] == "no", dep


def test_long_running_services_restart(services: dict[str, dict[str, Any]]) -> None:
    for name in SERVICES - {"migrate", "simulator"}:
        assert services[name]["restart"] == "unless-stopped", name


def test_redis_is_durable_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    args = " ".join(_argv(redis["command"]))
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction", "--maxmemory "):
        assert setting in args
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_redis_requires_a_password_and_every_client_sends_it(services: dict[str, dict[str, Any]]) -> None:
    # Whoever can write a task to the broker has it stored by the workers: Redis must not take one from anybody.
    redis = services["redis"]
    command = [str(part) for part in redis["command"]]
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert redis["environment"]["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
    health = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in health and "$${REDIS_PASSWORD}" in health  # $$: read in the container, not by compose
    clients = {name for name, svc in services.items() if "REDIS_URL" in (svc.get("environment") or {})}
    assert clients == {"worker", "beat", *FEEDS, "flower", "api", "maintenance"}
    for name in clients:
        url = services[name]["environment"]["REDIS_URL"]
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@redis:6379/\d+", url), f"{name}: {url}"


def test_postgres_is_health_checked_and_persistent(services: dict[str, dict[str, Any]]) -> None:
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {
        v.split(":", 1)[0] for svc in services.values() for v in svc.get("volumes", []) if not v.startswith(("/", "."))
    }
    assert used <= set(compose.get("volumes") or {})


def test_feed_shards_split_the_symbols_with_the_same_settings(services: dict[str, dict[str, Any]]) -> None:
    from feed.universe import in_shard
    from models.settings import Settings

    feeds = [services[name] for name in FEEDS]
    shards = [Settings.model_validate({"shard": f["environment"]["BOOKFEED_SHARD"]}).shard_of_n for f in feeds]
    assert shards == [(i, len(FEEDS)) for i in range(len(FEEDS))]
    # Everything but the shard is the same: a shard knows only its own index, so other symbol lists would overlap.
    others = [{k: v for k, v in f.items() if k != "environment"} for f in feeds]
    envs = [{k: v for k, v in f["environment"].items() if k != "BOOKFEED_SHARD"} for f in feeds]
    assert all(o == others[0] for o in others) and all(e == envs[0] for e in envs)
    for field in ("BOOKFEED_SYMBOLS", "BOOKFEED_QUOTE", "BOOKFEED_EXCLUDE", "BOOKFEED_REST_URL", "BOOKFEED_URL"):
        assert field in envs[0] and envs[0][field] is None  # passed through from the host, alike to both
    assert all(f["deploy"]["replicas"] == 1 for f in feeds)
    # With the default symbols every shard has work.
    assert all(in_shard(Settings.model_fields["symbols"].default, shard) for shard in shards)


def test_optional_services_are_in_their_profiles(services: dict[str, dict[str, Any]]) -> None:
    # `docker compose up` runs the pipeline (retention included, idle while unset); the simulator and monitoring are
    # opt-in profiles.
    assert {name: svc["profiles"] for name, svc in services.items() if "profiles" in svc} == PROFILES


# --- compose: configuration and secrets ----------------------------------------------------------------------------


def test_required_secrets_fail_fast_when_unset(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]["environment"]
    assert migrate["DATABASE_URL"].startswith("postgresql://") and "${POSTGRES_PASSWORD:?" in migrate["DATABASE_URL"]
    assert migrate["BOOKFEED_WORKER_DB_PASSWORD"].startswith("${WORKER_DB_PASSWORD:?")
    assert migrate["BOOKFEED_READER_DB_PASSWORD"].startswith("${READER_DB_PASSWORD:?")
    # Workers connect as the least-privilege login that migrate creates, never as the owner.
    worker_url = services["worker"]["environment"]["DATABASE_URL"]
    assert worker_url.startswith("postgresql://bookfeed_worker:${WORKER_DB_PASSWORD:?")
    assert migrate["BOOKFEED_WORKER_DB_USER"] == "bookfeed_worker"
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_database_password_reaches_only_the_services_that_use_the_database(
    services: dict[str, dict[str, Any]],
) -> None:
    with_db = {name for name, svc in services.items() if "DATABASE_URL" in svc.get("environment", {})}
    assert with_db == {"migrate", "worker", "beat", "api", "maintenance"}
    # The API reads as the analysts' login (the views only); retention drops partitions, so the worker that runs it
    # (the only one on the maintenance queue) is the owner.
    assert services["api"]["environment"]["DATABASE_URL"].startswith("postgresql://bookfeed_analyst:")
    owner = services["migrate"]["environment"]["DATABASE_URL"]
    assert services["maintenance"]["environment"]["DATABASE_URL"] == owner
    # Beat only reads (its averages staleness warning): the workers' least-privilege login, not the owner.
    assert services["beat"]["environment"]["DATABASE_URL"] == services["worker"]["environment"]["DATABASE_URL"]


def test_environment_names_are_real_settings(services: dict[str, dict[str, Any]]) -> None:
    from models.settings import Settings

    known = {"BOOKFEED_" + name.upper() for name in Settings.model_fields} | {"DATABASE_URL", "REDIS_URL"}
    for name in OUR_SERVICES:
        env = services[name]["environment"]
        unknown = {key for key in env if key.startswith("BOOKFEED_") or key.endswith("_URL")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of models.settings.Settings"


@pytest.mark.parametrize("name", sorted(OUR_SERVICES))
def test_environment_defaults_are_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from models.settings import Settings

    for key, value in services[name]["environment"].items():
        if value is not None and (key.startswith("BOOKFEED_") or key.endswith("_URL")):
            monkeypatch.setenv(key, _interpolate(str(value)))
    Settings(_env_file=None)  # type: ignore[call-arg]


def test_no_secret_literals() -> None:
    for path in (COMPOSE, DOCKERFILE):
        text = path.read_text()
        assert not re.search(r"(?i)password\s*=\s*(?!\$\{)\S", text), path.name
        # user:password@host in any URL must take the password from the environment.
        for match in re.finditer(r"://[^/\s:@]+:([^@\s]+)@", text):
            assert match[1].startswith("${") and match[1].endswith("}"), match[0]
        assert "--basic_auth" not in text, path.name


def test_secret_variables_are_interpolated(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}.{key}"


# --- compose: every command exists ---------------------------------------------------------------------------------


def test_every_service_runs_a_known_program(services: dict[str, dict[str, Any]]) -> None:
    for name in OUR_SERVICES:
        assert _argv(services[name]["command"])[0] in {"bookfeed", "celery"}, name


def _build_parser() -> argparse.ArgumentParser:
    """The parser of the `bookfeed` console script, found through its entry point in pyproject.toml."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["bookfeed"]
    module = importlib.import_module(entry.split(":")[0])
    parser = module.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._subparsers._group_actions for name in action.choices}


def test_bookfeed_subcommands_exist(services: dict[str, dict[str, Any]]) -> None:
    parser = _build_parser()
    commands = _commands(services, "bookfeed")
    assert set(commands) == {"migrate", *FEEDS, "simulator", "api"}
    assert {argv[1] for argv in commands.values()} <= _subcommands(parser)
    for name, argv in commands.items():
        try:
            parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse exits on an unknown option
            pytest.fail(f"{name}: `{shlex.join(argv)}` is rejected by bookfeed's parser ({exc})")


def test_celery_services_target_the_app(services: dict[str, dict[str, Any]]) -> None:
    from celery import Celery

    import workers

    commands = _commands(services, "celery")
    assert {name: argv[1:4] for name, argv in commands.items()} == {
        "worker": ["-A", "workers", "worker"],
        "beat": ["-A", "workers", "beat"],
        "flower": ["-A", "workers", "flower"],
        "maintenance": ["-A", "workers", "worker"],
    }
    assert isinstance(workers.celery, Celery)


def test_celery_options_exist(services: dict[str, dict[str, Any]]) -> None:
    from celery.bin.celery import celery as celery_cli

    for name in ("worker", "beat"):
        argv = _commands(services, "celery")[name]
        params = {opt for p in celery_cli.commands[argv[3]].params for opt in p.opts}
        assert set(_options(argv[4:])) <= params, name


def test_flower_options_exist(services: dict[str, dict[str, Any]]) -> None:
    import flower.options  # noqa: F401  (defines Flower's tornado options)
    from tornado.options import options

    argv = _commands(services, "celery")["flower"]
    names = {opt.lstrip("-").replace("-", "_") for opt in _options(argv[4:])}
    assert names <= set(options._options) | {n.replace("-", "_") for n in options._options}
    flower_env = {k[len("FLOWER_") :].lower() for k in services["flower"]["environment"] if k.startswith("FLOWER_")}
    assert flower_env <= {n.replace("-", "_") for n in options._options}


@pytest.fixture
def celeryconfig(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The celeryconfig module; it requires REDIS_URL, so a placeholder is set when the run has none (no connection
    is made)."""
    from models.settings import get_settings

    if not os.environ.get("REDIS_URL"):
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    yield importlib.import_module("celeryconfig")
    get_settings.cache_clear()


def test_celeryconfig_requires_redis_url_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("BOOKFEED_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", "import celeryconfig"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr == "bookfeed: REDIS_URL is not set\n"


def test_beat_runs_one_averages_task_per_window(celeryconfig: ModuleType) -> None:
    from models.vocabulary import AVERAGES_TASK, METRICS_QUEUE, WINDOWS_S

    entries = [e for e in celeryconfig.beat_schedule.values() if e["task"] == AVERAGES_TASK]
    entries.sort(key=lambda e: e["schedule"].period_s)
    assert [(e["task"], e["schedule"].period_s, e["kwargs"], e["options"]["queue"]) for e in entries] == [
        (AVERAGES_TASK, float(w), {"window_s": w}, METRICS_QUEUE) for w in WINDOWS_S
    ]
    assert all(0 < e["options"]["expires"] < e["schedule"].period_s for e in entries)
    # Each size runs just after its windows close (grace 5 s by default), and no two sizes at the same instant.
    first = {e["kwargs"]["window_s"]: e["schedule"].next_after(0.0) for e in entries}
    assert first == {30: 6.0, 60: 21.0}
    due = {w: {int(first[w] + k * w) % 60 for k in range(2)} for w in first}
    assert not due[30] & due[60]


def _queues(argv: list[str]) -> set[str]:
    return set(argv[argv.index("-Q") + 1].split(","))


def test_workers_consume_every_routed_queue(
    services: dict[str, dict[str, Any]], celeryconfig_retention: ModuleType
) -> None:
    from models.vocabulary import MAINTENANCE_QUEUE

    commands = _commands(services, "celery")
    worker, maintenance = _queues(commands["worker"]), _queues(commands["maintenance"])
    routed = {route["queue"] for route in celeryconfig_retention.task_routes.values()}
    scheduled = {entry["options"]["queue"] for entry in celeryconfig_retention.beat_schedule.values()}
    assert routed | scheduled | {celeryconfig_retention.task_default_queue} <= worker | maintenance
    # Retention drops partitions: only the owner's worker consumes its queue, and it consumes nothing else.
    assert maintenance == {MAINTENANCE_QUEUE} and MAINTENANCE_QUEUE not in worker
    assert "--concurrency=1" in commands["maintenance"]


def test_beat_sends_no_retention_task_while_retention_is_unset(celeryconfig: ModuleType) -> None:
    # Nothing would consume it but the maintenance worker: no message may wait on its queue for nothing.
    assert not os.environ.get("BOOKFEED_RETENTION_DAYS")
    assert "retention" not in celeryconfig.beat_schedule


def test_beat_sends_retention_hourly_to_the_maintenance_queue(celeryconfig_retention: ModuleType) -> None:
    from models.vocabulary import MAINTENANCE_QUEUE, RETENTION_TASK

    entry = celeryconfig_retention.beat_schedule["retention"]
    assert (entry["task"], entry["options"]["queue"], entry["schedule"].period_s) == (
        RETENTION_TASK,
        MAINTENANCE_QUEUE,
        3600.0,
    )
    assert celeryconfig_retention.task_routes[RETENTION_TASK] == {"queue": MAINTENANCE_QUEUE}
    # At half past each hour on the clock; dropped if it could not start within the hour.
    assert entry["schedule"].next_after(0.0) == 1800.0 and 0 < entry["options"]["expires"] < 3600


@pytest.fixture
def celeryconfig_retention(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """celeryconfig as beat loads it with BOOKFEED_RETENTION_DAYS set (reloaded; reloaded again without it after)."""
    from models.settings import get_settings

    if not os.environ.get("REDIS_URL"):
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("BOOKFEED_RETENTION_DAYS", "30")
    get_settings.cache_clear()
    module = importlib.reload(importlib.import_module("celeryconfig"))
    yield module
    monkeypatch.delenv("BOOKFEED_RETENTION_DAYS")
    get_settings.cache_clear()
    importlib.reload(module)
    get_settings.cache_clear()


def test_beat_schedule_tasks_are_registered(celeryconfig_retention: ModuleType) -> None:
    """Every task beat sends (retention too, as beat schedules it when set) is one the workers have."""
    import workers
    import workers.tasks  # registers the tasks; needs no broker connection
    from models.vocabulary import INGEST_TASK, RETENTION_TASK

    scheduled = {entry["task"] for entry in celeryconfig_retention.beat_schedule.values()}
    assert RETENTION_TASK in scheduled
    assert scheduled | {INGEST_TASK} <= set(workers.celery.tasks)


# --- Dockerfile ----------------------------------------------------------------------------------------------------


def test_dockerfile_base_and_user() -> None:
    steps = _dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for instr, args in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    # The last USER comes after every RUN, so nothing at run time is root.
    last_user = max(i for i, (instr, _) in enumerate(steps) if instr == "USER")
    assert all(instr != "RUN" for instr, _ in steps[last_user:])


def test_dockerfile_copies_existing_files_not_dockerignored() -> None:
    copies = [args.split() for instr, args in _dockerfile() if instr in {"COPY", "ADD"}]
    assert copies
    for args in copies:
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not _dockerignored(source), f"{source} is excluded by .dockerignore"


def test_dockerfile_installs_the_whole_project() -> None:
    steps = _dockerfile()
    install = next(
        i for i, (instr, args) in enumerate(steps) if instr == "RUN" and re.search(r"pip install .*\s\.(\s|$)", args)
    )
    copied = {
        source.rstrip("/")
        for instr, args in steps[:install]
        if instr == "COPY"
        for source in [a for a in args.split() if not a.startswith("--")][:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    needed |= {f"{m}.py" for m in setuptools.get("py-modules", [])} | {"pyproject.toml", project["project"]["readme"]}
    assert needed <= copied


def test_dockerignore_keeps_local_secrets_and_state_out() -> None:
    for path in (".env", "models/.env", ".git", ".venv", ".bookfeed", "tests"):
        assert _dockerignored(path), path


def test_dockerfile_bakes_no_configuration_or_secrets() -> None:
    for instr, args in _dockerfile():
        if instr in {"ENV", "ARG"}:
            assert not re.search(r"(?i)PASSWORD|SECRET|TOKEN|AUTH|DATABASE_URL|REDIS_URL", args), args


def test_dockerfile_default_command_is_a_bookfeed_command() -> None:
    cmd = json.loads(next(args for instr, args in _dockerfile() if instr == "CMD"))
    assert cmd[0] == "bookfeed"
    parser = _build_parser()
    assert cmd[1] == "--help" or cmd[1] in _subcommands(parser)
