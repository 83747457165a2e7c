"""Settings from the environment: a `CIVICFLOW_*` variable Civicflow does not know is refused."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from civicflow.errors import TerminalError
from civicflow.settings import NOT_SETTINGS, Settings, refuse_unknown_variables, setting_variables

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def test_a_misspelt_variable_is_refused_naming_the_setting_it_meant(monkeypatch, tmp_path):
    monkeypatch.setenv("CIVICFLOW_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("CIVICFLOW_MQTT_HOST", "broker.example")
    with pytest.raises(TerminalError) as refused:
        Settings()
    message = str(refused.value)
    assert message.splitlines()[0] == (
        "CIVICFLOW_MQTT_HOST is not a Civicflow setting: did you mean CIVICFLOW_MQTT__HOST?"
    )
    assert "Rename or unset it" in message and "docs/operations.md" in message
    monkeypatch.delenv("CIVICFLOW_MQTT_HOST")
    monkeypatch.setenv("CIVICFLOW_MQTT__HOST", "broker.example")
    assert Settings().mqtt.host == "broker.example"


def test_every_unknown_variable_is_named_with_its_closest_setting():
    environ = {
        "CIVICFLOW_DATAROOT": "/srv/civicflow",
        "civicflow_landing__segment_max_age": "60",
        "CIVICFLOW_ZZZZZ": "1",
        "CIVICFLOW_MQTT__HOST": "ok",
        "PATH": "/bin",
    }
    with pytest.raises(TerminalError) as refused:
        refuse_unknown_variables(environ)
    assert str(refused.value).splitlines()[:3] == [
        "CIVICFLOW_DATAROOT is not a Civicflow setting: did you mean CIVICFLOW_DATA_ROOT?",
        "CIVICFLOW_ZZZZZ is not a Civicflow setting: no setting has a similar name.",
        "civicflow_landing__segment_max_age is not a Civicflow setting: did you mean "
        "CIVICFLOW_LANDING__SEGMENT_MAX_AGE_S?",
    ]
    assert "Rename or unset them" in str(refused.value)


def test_settings_other_variables_and_tooling_pass():
    assert {
        "CIVICFLOW_DATA_ROOT",
        "CIVICFLOW_MQTT__TLS__CA_FILE",
        "CIVICFLOW_QUALITY__VOLUME_MIN_DAYS",
    } <= set(setting_variables())
    refuse_unknown_variables(
        {
            "civicflow_data_root": "lower case, as pydantic-settings reads it",
            "CIVICFLOW_MQTT": '{"host": "whole nested model as JSON"}',
            "CIVICFLOW_PUBLISH__CKAN__API_KEY": "x",
            "CIVICFLOW_LOG_JSON": "1",
            "CIVICFLOW_TEST_PG_BIN": "/usr/lib/postgresql/17/bin",
            "CIVICFLOW_BENCH_MOSQUITTO": "/usr/sbin/mosquitto",
            "CIVICFLOW_FUZZ_SEED": "1",
        }
    )


def _files_naming_variables() -> list[Path]:
    """Where a variable may be set or documented: not bench/'s data, only its code."""
    files = [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "bench").glob("*.py")]
    for root in ("deploy", "docs", "tests", "dags", "app", "jobs", ".ci"):
        files += [p for p in (ROOT / root).rglob("*") if p.is_file() and p.suffix not in (".png", ".pyc")]
    return [p for p in files if p != Path(__file__).resolve()]  # this file misspells on purpose


def test_every_variable_the_repository_names_is_accepted():
    """Docs, deploy files, DAGs, tests and CI use no `CIVICFLOW_*` name that settings would refuse."""
    named: dict[str, Path] = {}
    for path in _files_naming_variables():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines():
            if "misspelt" in line or "is not a Civicflow setting" in line:
                continue  # the docs show what a misspelt name looks like
            # a whole name: not a prefix such as CIVICFLOW_QUALITY__<NAME>, nor PW_CIVICFLOW_... (NATS)
            for name in re.findall(r"(?<![A-Za-z0-9_])CIVICFLOW_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_<])", line):
                named.setdefault(name, path)
    assert len(named) > 30, sorted(named)
    refused = []
    for name, path in sorted(named.items()):
        try:
            refuse_unknown_variables({name: ""})
        except TerminalError:
            refused.append(f"{name} ({path.relative_to(ROOT)})")
    assert refused == []


def test_every_environment_variable_of_a_command_option_is_accepted():
    import typer.main

    from civicflow.app.cli import app

    def envvars(command) -> list[str]:
        found = [
            e for p in command.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])
        ]
        for sub in getattr(command, "commands", {}).values():
            found += envvars(sub)
        return found

    names = envvars(typer.main.get_command(app))
    assert "CIVICFLOW_LOG_JSON" in names
    assert sorted(n for n in names if n.startswith("CIVICFLOW_")) == sorted(
        n for n in names if n in NOT_SETTINGS or n in setting_variables()
    )


def test_the_command_prints_the_refusal_and_exits_2(monkeypatch, capsys):
    from civicflow.app.cli import main

    monkeypatch.setenv("CIVICFLOW_DATAROOT", "/srv/civicflow")
    monkeypatch.setenv("COLUMNS", "80")  # as CI passes it down; stderr is not a terminal: no wrapping
    monkeypatch.setattr(sys, "argv", ["civicflow", "status", "--no-probe"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "CIVICFLOW_DATAROOT is not a Civicflow setting: did you mean CIVICFLOW_DATA_ROOT?" in err
