"""``specrag settings``, ``specrag keys create`` and the checks ``specrag up`` makes before it starts."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from serve_app.cli import app

runner = CliRunner()


def test_settings_prints_redacted_tree(monkeypatch) -> None:
    monkeypatch.setenv("SPECRAG_REDIS_URL", "redis://:s3cret@cache:6380/0")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 0
    tree = json.loads(result.output)
    assert tree["redis"]["url"] == "**********" and "s3cret" not in result.output


def test_invalid_settings_exit_2_naming_the_field(monkeypatch) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "zero")
    result = runner.invoke(app, ["settings"])
    assert result.exit_code == 2
    assert "search.rrf_k" in result.output


def test_keys_create_prints_the_key_once_and_its_hash() -> None:
    result = runner.invoke(app, ["keys", "create", "crm-search", "--scope", "search", "--scope", "ingest"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    key = lines[0].split(": ", 1)[1]
    entry = json.loads(lines[1].split(": ", 1)[1])
    assert entry["name"] == "crm-search" and entry["scopes"] == ["search", "ingest"]
    assert entry["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert result.output.count(key) == 1  # shown once, never in the settings entry
    assert "auth.file" in lines[2] and "SPECRAG_AUTH__KEYS='[" in lines[2]


def test_keys_create_gives_the_key_its_data_scopes() -> None:
    args = ["keys", "create", "team-a", "--read-source", "team-a/", "--read-source", "shared/"]
    result = runner.invoke(app, [*args, "--write-source", "team-a/", "--write-kind", "spec"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output.splitlines()[1].split(": ", 1)[1])
    assert entry["read"] == {"sources": ["team-a/", "shared/"]}
    assert entry["write"] == {"sources": ["team-a/"], "kinds": ["spec"]}


def test_keys_create_rejects_a_bad_name() -> None:
    result = runner.invoke(app, ["keys", "create", "has space"])
    assert result.exit_code == 2


def test_up_refuses_a_port_in_rays_worker_range_before_starting_anything(monkeypatch) -> None:
    import serve_app.cli.service as service

    monkeypatch.setattr(service, "ensure_model", lambda s: (_ for _ in ()).throw(AssertionError("started")))
    result = runner.invoke(app, ["up", "--port", "12000"])
    assert result.exit_code == 2
    assert "--port" in result.output and "Ray" in result.output
