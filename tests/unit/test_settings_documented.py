"""Every setting is documented and deployed: each Settings field (its environment name, BOOKFEED_* or its alias) has
a row in README.md's Configuration table, and docker-compose.yml passes it to every service whose process reads it.

Which process reads a setting is declared beside the field in models/settings.py (`used_by`); which process each
compose service runs is the map below. A key without a value in compose passes the host's value through.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from models.settings import PROCESSES, Settings, env_name, used_by

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1].parent
README = ROOT / "README.md"
COMPOSE = ROOT / "docker-compose.yml"

# compose service -> the bookfeed process it runs (the simulator reads no setting; `up` is not a compose service).
SERVICE_PROCESS = {
    "feed-0": "feed",
    "feed-1": "feed",
    "worker": "worker",
    "beat": "beat",
    "flower": "flower",
    "migrate": "migrate",
    "api": "api",
    "maintenance": "maintenance",
}

FIELDS = sorted(Settings.model_fields)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is missing: add pyyaml to the dev extras in pyproject.toml")
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the x- anchors and << merges
    return dict(data["services"])


def configuration_table(readme: str) -> str:
    """The first column of README's `### Configuration` table."""
    section = readme.split("### Configuration", 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return "\n".join(row.split("|")[1] for row in rows)


def test_every_field_says_which_processes_read_it() -> None:
    for field in FIELDS:
        readers = used_by(field)
        assert readers, f"{field}: no used_by in models/settings.py"
        assert readers <= PROCESSES, f"{field}: unknown processes {sorted(readers - PROCESSES)}"
    assert set(SERVICE_PROCESS.values()) <= PROCESSES


@pytest.mark.parametrize("field", FIELDS)
def test_setting_has_a_row_in_the_readme_configuration_table(field: str) -> None:
    names = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", configuration_table(README.read_text())))
    assert env_name(field) in names, f"README.md's Configuration table has no row for {env_name(field)}"


@pytest.mark.parametrize("field", FIELDS)
def test_compose_passes_the_setting_to_every_service_that_reads_it(
    services: dict[str, dict[str, Any]], field: str
) -> None:
    name = env_name(field)
    missing = [
        service
        for service, process in SERVICE_PROCESS.items()
        if process in used_by(field) and name not in (services[service].get("environment") or {})
    ]
    assert not missing, f"docker-compose.yml does not pass {name} to {missing}"


def test_a_setting_default_in_a_compose_command_is_the_settings_default(services: dict[str, dict[str, Any]]) -> None:
    """A command line that stands in for a setting (`--symbols ${BOOKFEED_SYMBOLS:-...}` for the simulator) must fall
    back to the default Settings has, so the two cannot drift apart. (An environment value such as JSON logs is a
    deployment choice, not a restated default.)"""
    found = 0
    for service in services.values():
        command = " ".join(str(part) for part in service.get("command") or [])
        for match in re.finditer(r"\$\{(BOOKFEED_\w+):?-([^}]*)\}", command):
            field = match[1][len("BOOKFEED_") :].lower()
            assert field in Settings.model_fields, match[0]
            parsed = Settings.model_validate({field: match[2]})
            assert getattr(parsed, field) == Settings.model_fields[field].default, match[0]
            found += 1
    assert found, "the simulator's --symbols default is expected here"


def test_the_configuration_table_names_no_unknown_setting() -> None:
    known = {env_name(field) for field in FIELDS}
    names = set(re.findall(r"`((?:BOOKFEED_|DATABASE_|REDIS_)[A-Z0-9_]*)`", configuration_table(README.read_text())))
    assert names <= known, f"not settings: {sorted(names - known)}"
