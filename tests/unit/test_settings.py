from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.settings import Settings, load_settings


def test_nested_env_and_flat_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "25")
    monkeypatch.setenv("SPECRAG_MILVUS_URI", "http://milvus.internal:19530")
    monkeypatch.setenv("SPECRAG_MODEL_PATH", "BAAI/bge-m3")
    s = Settings()
    assert s.search.rrf_k == 25
    assert s.milvus.uri == "http://milvus.internal:19530"
    assert s.model.name_or_path == "BAAI/bge-m3"


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_BATCH__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match=r"batch\.max_batch_size"):
        Settings()


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="serch"):
        load_settings({"serch": {"top_k": 3}})
    with pytest.raises(ValidationError, match=r"search\.topk"):
        load_settings({"search": {"topk": 3}})


def test_ray_worker_ports_are_refused() -> None:
    with pytest.raises(ValidationError, match="Ray's worker range"):
        Settings(serve={"port": 12000})


@pytest.mark.parametrize("prefix", ["specrag", "/specrag/", "/a b", "/{x}", ""])
def test_a_route_prefix_serve_would_refuse_is_refused_by_name(prefix: str) -> None:
    with pytest.raises(ValidationError, match=r"serve\.route_prefix"):
        Settings(serve={"route_prefix": prefix})
    assert Settings(serve={"route_prefix": "/specrag/v1"}).serve.route_prefix == "/specrag/v1"


def test_overrides_merge_per_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_SEARCH__RRF_K", "25")
    s = load_settings({"search": {"top_k": 7}})
    assert (s.search.top_k, s.search.rrf_k) == (7, 25)


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECRAG_REDIS_URL", "redis://:hunter2@cache:6380/0")
    s = Settings()
    assert s.redis.url is not None and "hunter2" in s.redis.url.get_secret_value()
    assert "hunter2" not in str(s.redacted())
