"""``specrag cluster up|down|bench``: a local multi-node Ray cluster to try the operator's and the data
engineer's commands by hand (``devtools.cluster``; docs/operations.md, "Trying it on a local
multi-node cluster")."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import ensure_model, prepare
from serve_app.settings import DEFAULT_HOME

cluster_app = typer.Typer(
    no_args_is_help=True, help="A local multi-node Ray cluster (head + workers on loopback) to try things on."
)
HomeOpt = Annotated[Path, typer.Option(help="Where the cluster's state, logs and generated config live.")]


@cluster_app.command("up")
def up(
    workers: Annotated[
        int, typer.Option(min=1, max=4, help="Worker nodes; the first carries the accelerator.")
    ] = 1,
    milvus_uri: Annotated[
        str | None, typer.Option(help="Milvus to use (default: start a Milvus Lite server under --home).")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option(help="Redis for the caches (default: from settings).")
    ] = None,
    home: HomeOpt = DEFAULT_HOME / "cluster",
    verbose: bool = False,
) -> None:
    """Start a head (dashboard on) and worker nodes, write a Serve config for them, print what to run next.

    The nodes and the Milvus Lite server keep running after this command: ``specrag cluster down``
    stops them.
    """
    from serve_app.devtools.cluster import (
        ACCELERATOR,
        STATE_FILE,
        ClusterApp,
        LocalCluster,
        cluster_args,
        ingest_env,
        start_milvus_detached,
    )
    from serve_app.devtools.local_stack import free_port

    settings = prepare(verbose)
    ensure_model(settings)
    if (home / STATE_FILE).exists():
        typer.echo(f"a cluster is already recorded in {home}; run `specrag cluster down --home {home}` first")
        raise typer.Exit(1)
    milvus_pids: list[int] = []
    if milvus_uri is None:
        milvus_uri, pid = start_milvus_detached(home / "milvus")
        milvus_pids.append(pid)
    redis_url = redis_url or (settings.redis.url.get_secret_value() if settings.redis.url else None)
    cluster = LocalCluster(home)
    try:
        cluster.start()
        cluster.save(milvus_pids=milvus_pids)
        for i in range(workers):
            cluster.add_worker({ACCELERATOR: 1} if i == 0 else {})
    except BaseException:
        cluster.stop(keep_logs=True)
        _stop_milvus(milvus_pids)
        raise
    port = free_port()
    model = settings.model.name_or_path
    app = ClusterApp(
        cluster,
        cluster_args(model_dir=model, milvus_uri=milvus_uri, redis_url=redis_url, http_port=port),
        port,
        home / "serve_config.cluster.yaml",
    )
    config = app.write()
    dash = cluster.dashboard_url
    env = ingest_env(model_dir=model, milvus_uri=milvus_uri, redis_url=redis_url)
    runtime_env = shlex.quote(json.dumps({"env_vars": env, "excludes": [".git", "docs", "tests"]}))
    typer.echo(
        f"\ncluster up: head + {workers} worker(s); dashboard {dash}, GCS {cluster.gcs_address}\n"
        f"Serve config for it: {config}\n\nnext:\n"
        f"  serve deploy {config} --address {dash}\n"
        f"  serve status --address {dash}\n"
        f"  curl -s {app.base_url}/v1/search -H 'content-type: application/json' "
        '-d \'{"query": "..."}\'\n'
        f"  ray job submit --address {dash} --working-dir . --runtime-env-json {runtime_env} "
        f"-- python -m jobs.ingest serve_app/sample_docs --collection cluster\n"
        f"  specrag cluster down --home {home}\n"
    )


@cluster_app.command("down")
def down(home: HomeOpt = DEFAULT_HOME / "cluster") -> None:
    """Stop the nodes (workers first) and the Milvus Lite server that ``up`` started."""
    from serve_app.devtools.cluster import STATE_FILE, LocalCluster

    if not (home / STATE_FILE).exists():
        typer.echo(f"no cluster recorded in {home}")
        raise typer.Exit(1)
    cluster, extra = LocalCluster.load(home)
    cluster.stop()
    _stop_milvus(extra.get("milvus_pids") or [])
    typer.echo("cluster stopped")


def _stop_milvus(pids: list[int]) -> None:
    """SIGTERM the Milvus Lite server ``up`` started, if that pid still is one (pids get reused)."""
    import os
    import signal

    import psutil

    for pid in pids:
        try:
            if "milvus-lite" in " ".join(psutil.Process(pid).cmdline()):
                os.kill(pid, signal.SIGTERM)
        except (psutil.Error, ProcessLookupError):
            pass


@cluster_app.command("bench")
def bench(
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/cluster.json"),
    verbose: bool = False,
) -> None:
    """Time the operator's and data engineer's steps on a fresh local cluster (the integration test's)."""
    from serve_app.devtools.cluster import run_cluster_bench

    settings = prepare(verbose)
    ensure_model(settings)
    record = run_cluster_bench(out, Path(settings.model.name_or_path), echo=typer.echo)
    typer.echo(json.dumps(record, indent=2))
