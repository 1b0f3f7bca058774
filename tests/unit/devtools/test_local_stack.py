"""The launchers of the embedded default: ports, the sample documents, Redis, Serve's start and stop."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from serve_app.devtools import local_stack
from serve_app.settings import RAY_WORKER_PORTS


def test_sample_docs_are_the_bundled_folder() -> None:
    assert Path(local_stack.__file__).parents[1] / "sample_docs" == local_stack.SAMPLE_DOCS
    assert len(sorted(local_stack.SAMPLE_DOCS.glob("*.md"))) == 6


def test_the_cli_and_the_reliability_stack_use_the_same_sample_docs() -> None:
    from serve_app.cli import common
    from serve_app.devtools.reliability import stack

    assert common.SAMPLE_DOCS is stack.SAMPLE_DOCS is local_stack.SAMPLE_DOCS


def test_free_port_stays_outside_rays_worker_range() -> None:
    for _ in range(20):
        port = local_stack.free_port()
        assert port not in RAY_WORKER_PORTS and not local_stack.port_open("127.0.0.1", port)


def test_milvus_lite_refuses_a_ray_worker_port_before_starting(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="Ray's worker range"),
        local_stack.milvus_lite_server(tmp_path, port=12000),
    ):
        pass
    assert not any(tmp_path.iterdir())  # nothing was started or written


def test_redis_launcher_names_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not installed"):
        local_stack.RedisProcess(tmp_path, binary="no-such-redis-server")
    with (
        pytest.raises(RuntimeError, match="not installed"),
        local_stack.temporary_redis("no-such-redis-server"),
    ):
        pass


def test_redis_kill_without_a_running_server_is_an_error(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = local_stack.RedisProcess(tmp_path)
    assert redis.pid is None and redis.url == f"redis://127.0.0.1:{redis.port}/0"
    with pytest.raises(RuntimeError, match="not running"):
        redis.kill()


def test_temporary_redis_answers_then_stops() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with local_stack.temporary_redis() as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert url == f"redis://127.0.0.1:{port}/0" and port not in RAY_WORKER_PORTS
        assert local_stack.port_open("127.0.0.1", port)
    assert not local_stack.port_open("127.0.0.1", port)


class _FakeServe:
    def __init__(self, fail_start: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_start = fail_start

    def start(self, **kwargs) -> None:
        self.calls.append(("start", kwargs))
        if self.fail_start:
            raise RuntimeError("proxy did not start")

    def run(self, app, **kwargs) -> None:
        self.calls.append(("run", app, kwargs))

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


@pytest.fixture
def fake_serve(monkeypatch) -> _FakeServe:
    import ray

    fake = _FakeServe()
    monkeypatch.setattr(ray, "serve", fake, raising=False)
    monkeypatch.setitem(sys.modules, "ray.serve", fake)
    return fake


def test_serve_http_starts_on_the_address_and_always_shuts_down(fake_serve: _FakeServe) -> None:
    with local_stack.serve_http("127.0.0.1", 28123, local_stack.QUIET_SERVE_LOGS) as url:
        assert url == "http://127.0.0.1:28123"
        assert fake_serve.calls == [
            (
                "start",
                {
                    "http_options": {"host": "127.0.0.1", "port": 28123},
                    "logging_config": {"log_level": "WARNING"},
                },
            )
        ]
    assert fake_serve.calls[-1] == ("shutdown",)
    fake_serve.calls.clear()
    with pytest.raises(KeyError), local_stack.serve_http("127.0.0.1", 28124):
        raise KeyError("boom")
    assert fake_serve.calls[0][1]["logging_config"] is None and fake_serve.calls[-1] == ("shutdown",)


def test_serve_http_shuts_down_when_the_start_fails(fake_serve: _FakeServe) -> None:
    fake_serve.fail_start = True
    with pytest.raises(RuntimeError, match="proxy"), local_stack.serve_http("127.0.0.1", 28125):
        pass
    assert fake_serve.calls[-1] == ("shutdown",)


def test_deploy_app_runs_the_built_graph(fake_serve: _FakeServe, monkeypatch) -> None:
    built = []
    fake_app = types.ModuleType("serve_app.app")
    fake_app.build_app = lambda settings: built.append(settings) or "graph"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "serve_app.app", fake_app)
    local_stack.deploy_app("SETTINGS", "bench", logging_config={"log_level": "WARNING"})  # type: ignore[arg-type]
    assert built == ["SETTINGS"]
    assert fake_serve.calls == [
        ("run", "graph", {"name": "bench", "route_prefix": "/", "logging_config": {"log_level": "WARNING"}})
    ]


def test_the_haproxy_ingress_env_turns_it_on_with_files_and_ports_of_its_own(tmp_path: Path) -> None:
    env = local_stack.ingress_env("haproxy", tmp_path)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) < 30  # Ray's default waits 30 s
    paths = [v for k, v in env.items() if k.endswith(("_LOC", "_PATH", "_BASE", "_FILE"))]
    assert len(paths) == 4 and all(Path(p).is_relative_to(tmp_path) for p in paths)
    ports = {int(v) for k, v in env.items() if k.endswith("_PORT")}
    assert len(ports) == 4 and not ports & set(RAY_WORKER_PORTS)
    assert local_stack.ingress_env("proxy", tmp_path) == {}


def test_started_with_sets_only_what_the_caller_left_unset_and_restores(monkeypatch) -> None:
    monkeypatch.setenv("SPECRAG_TEST_MINE", "caller")
    monkeypatch.delenv("SPECRAG_TEST_ADDED", raising=False)
    with local_stack.started_with({"SPECRAG_TEST_MINE": "ours", "SPECRAG_TEST_ADDED": "ours"}):
        assert local_stack.os.environ["SPECRAG_TEST_MINE"] == "caller"
        assert local_stack.os.environ["SPECRAG_TEST_ADDED"] == "ours"
    assert local_stack.os.environ["SPECRAG_TEST_MINE"] == "caller"
    assert "SPECRAG_TEST_ADDED" not in local_stack.os.environ


def test_ray_scratch_removes_its_directory() -> None:
    with local_stack.ray_scratch("haproxy") as env:
        scratch = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
        assert scratch.is_dir()
    assert not scratch.exists()
    with local_stack.ray_scratch("proxy") as env:
        assert env == {}
