"""``specrag bench ...``: benchmarks whose figures go to docs/BENCHMARKS.md (``devtools.bench``;
``bench load`` drives the reliability suite's load generator against the real local stack)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import SAMPLE_DOCS, ensure_model, open_store, prepare
from serve_app.cli.reliability import STACK_MACHINE, HomeOpt, MdOpt, OutOpt, local_stack
from serve_app.devtools.bench.embed import ModelShape
from serve_app.devtools.common import command_line, machine_description, replace_section
from serve_app.settings import DEFAULT_HOME, IngressMode

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks whose figures go to docs/BENCHMARKS.md.")


@bench_app.command("embed")
def bench_embed(
    texts: Annotated[int, typer.Option(min=1, max=100_000, help="Texts per phase, 1/3 long.")] = 384,
    concurrency: Annotated[str, typer.Option(help="Comma-separated HTTP concurrency levels.")] = "1,8,32,64",
    data: Annotated[
        Path | None, typer.Option(exists=True, help="BEIR corpus.jsonl instead of the samples.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Raw figures (JSON). [default: docs/benchmarks/embed.json, embed-bge-m3-shape.json]"
        ),
    ] = None,
    markdown: Annotated[
        Path, typer.Option(help="Markdown file whose bench:embed section is replaced.")
    ] = Path("docs/BENCHMARKS.md"),
    redis_url: Annotated[
        str | None, typer.Option(help="Redis for the cache-hit check (default: a temporary redis-server).")
    ] = None,
    cache_check: Annotated[bool, typer.Option(help="Measure cache-hit latency (needs Redis).")] = True,
    max_seconds: Annotated[float, typer.Option(min=1, help="Seconds per level, at most.")] = 90.0,
    texts_per_request: Annotated[int, typer.Option(min=1, max=256, help="Texts in each HTTP request.")] = 1,
    model_shape: Annotated[
        ModelShape,
        typer.Option(
            help="configured: the configured model; bge-m3: random weights in BGE-M3's shape (its cost "
            "per token, no download), the configured model's tokenizer. Own --out default and section."
        ),
    ] = "configured",
    references: Annotated[
        bool,
        typer.Option(help="Also run the engine 1 text per call, and beside the idle Ray + Serve app."),
    ] = True,
    seed: int = 0,
    verbose: bool = False,
) -> None:
    """Embedder through Serve's HTTP endpoint vs the same model in-process, on this machine, in one run."""
    from serve_app.devtools.bench import embed as bench

    try:
        levels = bench.parse_levels(concurrency)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--concurrency") from None
    settings = prepare(verbose)
    ensure_model(settings)
    options = bench.EmbedBenchOptions(
        source=data or SAMPLE_DOCS,
        texts=texts,
        concurrency=levels,
        data=data,
        out=out or bench.default_out(model_shape),
        markdown=markdown,
        redis_url=redis_url,
        cache_check=cache_check,
        max_seconds=max_seconds,
        texts_per_request=texts_per_request,
        model_shape=model_shape,
        references=references,
        seed=seed,
    )
    # Quoted exactly as typed, unless it carries the Redis URL (a password): then rebuilt without it.
    options.command = command_line(bench.reconstruct_command(options), secret_options=["--redis-url"])
    try:
        bench.run_embed_bench(settings, options, echo=typer.echo)
    except bench.ShapeWithoutTokenizer as exc:
        raise typer.BadParameter(str(exc), param_hint="--model-shape") from None


@bench_app.command("reembed")
def bench_reembed(
    data: Annotated[Path, typer.Argument(exists=True, help="BEIR corpus folder (e.g. eval/jaquad-ret).")],
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N passages.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    actors: Annotated[int, typer.Option(min=1)] = 1,
    segments: Annotated[int, typer.Option(min=1, help="Interleaved in-process / Ray segments.")] = 4,
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/reembed.json"),
    markdown: Annotated[Path, typer.Option(help="Markdown whose bench:reembed section is replaced.")] = Path(
        "docs/BENCHMARKS.md"
    ),
    verbose: bool = False,
) -> None:
    """Re-embed throughput: Ray Data actor pool vs the same model in-process, same machine, same run."""

    from serve_app.devtools.bench.reembed import ReembedBenchOptions, run_reembed_bench

    settings = prepare(verbose)
    ensure_model(settings)
    options = ReembedBenchOptions(
        data=data,
        limit=limit,
        batch_size=batch_size,
        actors=actors,
        segments=segments,
        out=out,
        markdown=markdown,
    )
    options.command = command_line(options.command)
    run_reembed_bench(settings, options, echo=typer.echo)


@bench_app.command("search")
def bench_search(
    data: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="BEIR collection already ingested by eval.")
    ],
    requests: Annotated[int, typer.Option(min=1, help="Requests per mode.")] = 100,
    variants: Annotated[int, typer.Option(min=1, max=20, help="Query variants per request.")] = 5,
    out: Annotated[Path, typer.Option(help="Raw figures (JSON).")] = Path("docs/benchmarks/search.json"),
    markdown: Annotated[Path, typer.Option(help="Markdown whose bench:search section is replaced.")] = Path(
        "docs/BENCHMARKS.md"
    ),
    verbose: bool = False,
) -> None:
    """Fan-out latency: sequential vs concurrent (asyncio.gather) vs Milvus hybrid_search, same searches."""

    from serve_app.core.embedding import EmbeddingService, EmbedItem
    from serve_app.core.evaluation import collection_name, load_queries
    from serve_app.core.local import local_retriever
    from serve_app.devtools.bench.search import format_table, run_search_bench, write_markdown

    settings = prepare(verbose)
    ensure_model(settings)
    queries, _ = load_queries(data, "dev")
    service = EmbeddingService.from_settings(settings)
    store = open_store(settings, service.dim, collection_name(data))
    if store.count() == 0:
        raise typer.BadParameter(f"{collection_name(data)} is empty: run `specrag eval {data}` first")
    texts = [q.text for q in queries[: max(variants * 4, 40)]]
    vectors = [
        {"dense": o["dense"], "sparse": o["sparse"]}
        for o in service.embed_items([EmbedItem(t, "query") for t in texts])
    ]
    report = run_search_bench(
        local_retriever(settings, store),
        vectors,
        requests=requests,
        variants=variants,
        echo=typer.echo,
    )
    report.update(
        dataset=data.name, milvus="Milvus Lite server" if "127.0.0.1" in settings.milvus.uri else "Milvus"
    )
    report["command"] = command_line("specrag bench search")
    typer.echo(format_table(report))
    write_markdown(report, markdown, out)
    typer.echo(f"written: {out}, {markdown}")


@bench_app.command("latency")
def bench_latency(
    requests: Annotated[int, typer.Option(min=5, help="Sequential requests per row.")] = 60,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = Path("docs/benchmarks/latency.json"),
    markdown: MdOpt = Path("docs/BENCHMARKS.md"),
    ingress: Annotated[
        IngressMode | None,
        typer.Option(help="The HTTP entry to measure (serve.ingress; default: the setting's)."),
    ] = None,
    verbose: bool = False,
) -> None:
    """Request path vs its floor: /healthz, embeddings, searches over HTTP; the stages in-process."""
    from serve_app.devtools.bench.latency import LatencyBenchOptions, run_latency_bench

    settings = prepare(verbose)
    if ingress is not None:
        settings = settings.model_copy(
            update={"serve": settings.serve.model_copy(update={"ingress": ingress})}
        )
    ensure_model(settings)
    options = LatencyBenchOptions(
        requests=requests,
        out=out,
        markdown=markdown,
        command=command_line("specrag bench latency"),
        machine=machine_description(STACK_MACHINE),
    )
    with local_stack(home, settings) as stack:
        report = run_latency_bench(stack, options, echo=typer.echo)
    typer.echo(json.dumps({k: v for k, v in report.items() if k.endswith("_ms") or k == "ratios"}, indent=2))
    typer.echo(f"written: {out}, {markdown}")


@bench_app.command("load")
def bench_load(
    duration: Annotated[float, typer.Option(min=5, help="Seconds of load.")] = 120.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second (open loop).")] = 1.5,
    mix: Annotated[
        str, typer.Option(help="Shares, e.g. search=6,embed=3,ingest=1.")
    ] = "search=6,embed=3,ingest=1",
    url: Annotated[
        str | None, typer.Option(help="A running service on loopback; default: start the local stack.")
    ] = None,
    home: HomeOpt = DEFAULT_HOME / "reliability",
    out: OutOpt = Path("docs/benchmarks/load.json"),
    markdown: MdOpt = Path("docs/BENCHMARKS.md"),
    verbose: bool = False,
) -> None:
    """Mixed load (searches ja/en/mixed, embeddings, writes): throughput, p50/p95/p99, errors."""
    import contextlib
    from dataclasses import asdict

    from serve_app.devtools.reliability.load import LoadRun, Mix
    from serve_app.devtools.reliability.report import load_rows, load_section

    try:
        shares = Mix.parse(mix)
        if url:
            LoadRun(url)  # refuses anything but loopback before any work
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    settings = prepare(verbose)
    ensure_model(settings)
    with contextlib.ExitStack() as stack_ctx:
        base = url or stack_ctx.enter_context(local_stack(home, settings)).base_url
        result = asyncio.run(LoadRun(base, duration_s=duration, rate=rate, mix=shares, timeout_s=60.0).run())
    report = {
        "rate": rate,
        "duration_s": duration,
        "mix": asdict(shares),
        "summary": result.summary(),
        "verify": result.verify,
        "machine": machine_description(STACK_MACHINE),
        "command": command_line("specrag bench load"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown.read_text(encoding="utf-8") if markdown.exists() else ""
    markdown.write_text(replace_section(text, load_section(report, str(out))), encoding="utf-8")
    typer.echo("\n".join(load_rows(report["summary"])))
    typer.echo(f"written: {out}, {markdown}")


@bench_app.command("freshness")
def bench_freshness(
    duration: Annotated[float, typer.Option(min=10, help="Seconds of mixed load.")] = 150.0,
    rate: Annotated[float, typer.Option(min=0.1, help="Load requests per second (open loop).")] = 1.5,
    mix: Annotated[
        str, typer.Option(help="Load shares, e.g. search=6,embed=3,ingest=1.")
    ] = "search=6,embed=3,ingest=1",
    probes: Annotated[int, typer.Option(min=1, help="Single-document writes measured.")] = 40,
    increments: Annotated[int, typer.Option(min=1, help="Git commits measured.")] = 6,
    files: Annotated[int, typer.Option(min=1, max=100, help="Files changed per commit.")] = 10,
    home: HomeOpt = DEFAULT_HOME / "freshness",
    out: OutOpt = Path("docs/benchmarks/freshness.json"),
    markdown: MdOpt = Path("docs/BENCHMARKS.md"),
    verbose: bool = False,
) -> None:
    """Write-to-searchable time (POST /v1/documents and a git increment) under the mixed load."""
    from serve_app.devtools.bench.freshness import SOURCE, FreshnessOptions, Repo, run_freshness_bench
    from serve_app.devtools.reliability.load import Mix

    try:
        shares = Mix.parse(mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from None
    settings = prepare(verbose)
    ensure_model(settings)
    repo = Repo.create(home.with_name(home.name + "-repo"), files)
    data = settings.model_dump()
    data["ingest"]["sources"] = {SOURCE: {"repo": str(repo.root), "prefix": f"{SOURCE}/"}}
    settings = type(settings).model_validate(data)
    options = FreshnessOptions(
        duration_s=duration,
        rate=rate,
        mix=shares,
        probes=probes,
        increments=increments,
        files_per_commit=files,
        out=out,
        markdown=markdown,
        command=command_line("specrag bench freshness"),
        machine=machine_description(STACK_MACHINE),
    )
    with local_stack(home, settings) as stack:
        report = run_freshness_bench(stack.base_url, repo, options, echo=typer.echo)
    typer.echo(json.dumps({k: report[k] for k in ("post_documents", "load")}, indent=2, default=str)[:3000])
    typer.echo(f"written: {out}, {markdown}")


@bench_app.command("formats")
def bench_formats(
    rows: Annotated[int, typer.Option(min=10, help="Rows of the large sheet.")] = 10_000,
    pages: Annotated[int, typer.Option(min=1, help="Pages of the long PDF.")] = 100,
    repeat: Annotated[int, typer.Option(min=1, help="Runs per conversion; the best is kept.")] = 3,
    out: OutOpt = Path("docs/benchmarks/formats.json"),
    markdown: MdOpt = Path("docs/BENCHMARKS.md"),
) -> None:
    """Converters on Japanese documents: markitdown's default path vs the chosen one, per format."""
    from serve_app.devtools.bench.formats import run_formats_bench

    run_formats_bench(
        out=out,
        markdown=markdown,
        rows=rows,
        pages=pages,
        repeat=repeat,
        command=command_line("specrag bench formats"),
        echo=typer.echo,
    )
    typer.echo(f"written: {out}, {markdown}")
