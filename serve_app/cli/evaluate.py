"""``specrag eval``: retrieval metrics per configuration on a labelled BEIR set (``core.evaluation``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer

from serve_app.cli.common import Progress, ensure_model, host_port, load_settings, open_store, setup_logging


def evaluate_cmd(
    dataset: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="BEIR-layout collection folder.")
    ],
    split: str = "dev",
    configs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated configurations (serve_app/core/evaluation.py CONFIGS); default: the"
            " three baselines and the candidates for the default pipeline."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries.")] = None,
    rerank_queries: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only N queries (spread over the set) for the rerank configs, for a quick look;"
            " default: every query, as published figures must.",
        ),
    ] = None,
    identifiers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Identifier queries generated into copies of the collection's passages (fixed seed)"
            " and searched through the default pipeline; 0 = skip.",
        ),
    ] = 80,
    reingest: bool = False,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            help="Replace this collection's section and the summary (from every eval-*.json next to --out)"
            " in this Markdown file, e.g. docs/BENCHMARKS.md."
        ),
    ] = None,
    verbose: bool = False,
) -> None:
    """Ingest a BEIR corpus into its own collection (once) and report retrieval metrics per configuration."""
    import contextlib
    import platform
    from functools import partial

    from serve_app.core.embedding import EmbeddingService
    from serve_app.core.evaluation import (
        CANDIDATES,
        CONFIGS,
        DEFAULT_CONFIGS,
        collection_name,
        evaluate,
        load_queries,
    )
    from serve_app.core.ingest import Ingestor, iter_documents
    from serve_app.core.local import local_expansion, local_retriever
    from serve_app.core.rerank import load_cross_encoder
    from serve_app.core.store import StoreUnavailable
    from serve_app.devtools.common import command_line, machine_description
    from serve_app.devtools.eval_report import (
        baseline_from_readme,
        format_table,
        loco_section,
        markdown_section,
        summary_section,
    )
    from serve_app.devtools.local_stack import apply_local_env, milvus_lite_server, port_open

    setup_logging(verbose)
    if not verbose:  # the pipeline logs every search at INFO, as it does in the service
        logging.getLogger("ray.serve.specrag.pipeline").setLevel(logging.WARNING)
    apply_local_env()
    settings = load_settings()
    wanted = [c.strip() for c in configs.split(",") if c.strip()] if configs else list(DEFAULT_CONFIGS)
    unknown = [c for c in wanted if c not in CONFIGS]
    if unknown:
        raise typer.BadParameter(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    queries, qrels = load_queries(dataset, split)
    if limit:
        queries = queries[:limit]
    ensure_model(settings)
    service = EmbeddingService.from_settings(settings)

    with contextlib.ExitStack() as stack:
        uri = settings.milvus.uri
        host, port = host_port(uri)
        if host in ("127.0.0.1", "localhost") and not port_open(host, port):
            # Nothing serves the configured URI: use a private Lite server for evaluation data.
            uri = stack.enter_context(milvus_lite_server(settings.home / "eval-milvus", port=port))
        settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update={"uri": uri})})
        store = open_store(settings, service.dim, collection_name(dataset))
        store.ensure_collection()
        ingest_report = None
        if reingest or store.count() == 0:
            typer.echo(f"ingesting {dataset / 'corpus.jsonl'} ...", err=True)
            embed = partial(service.embed_texts, colbert=settings.ingest.colbert_rows)
            ingestor = Ingestor(embed, store, settings.chunk, model_key=service.encoder.model_key)
            docs = list(iter_documents(dataset))
            bar = Progress(len(docs))
            ingest_report = ingestor.ingest(docs, total=len(docs), progress=bar).as_dict()
            bar.close()
            typer.echo(json.dumps(ingest_report), err=True)
        retriever = local_retriever(
            # The identifier set runs the default pipeline, whose channels may include bm25.
            settings,
            store,
            bm25=any("bm25" in CONFIGS[c]["channels"] for c in wanted)
            or (bool(identifiers) and "bm25" in settings.search.channels),
        )
        wants_expansion = bool(identifiers) or any(CONFIGS[c].get("expand") for c in wanted)
        expansion = local_expansion(settings, store) if wants_expansion else None
        s = settings.search  # the rerank /v1/search runs: with the cross-encoder when one is configured
        cross = load_cross_encoder(s.cross_encoder, s.cross_encoder_device) if s.cross_encoder else None
        report = evaluate(
            service,
            retriever,
            queries,
            qrels,
            configs=wanted,
            rerank_queries=rerank_queries,
            expansion=expansion,
            doc_langs=_corpus_langs(dataset),
            cross_encoder=cross,
        )
        if identifiers:
            from serve_app.core.evaluation import DEFAULT, config_pipeline, evaluate_identifiers
            from serve_app.core.pipeline import LocalEmbedder, MemoExpander, OriginalOnly

            pipeline = config_pipeline(
                DEFAULT, retriever, LocalEmbedder(service), MemoExpander(expansion or OriginalOnly()), cross
            )
            writer = Ingestor(service.embed_texts, store, settings.chunk, model_key=service.encoder.model_key)
            try:
                report["identifiers"] = evaluate_identifiers(
                    pipeline, writer, list(iter_documents(dataset)), count=identifiers
                )
            except StoreUnavailable as exc:  # the figures above stand; say why this one is missing
                typer.echo(f"identifier set not measured: {exc}", err=True)
                report["identifiers"] = {"error": str(exc)}
        report["settings"] = {
            "search": settings.search.model_dump(mode="json"),
            "expander": {
                "llm": bool(settings.expander.llm_url),
                "glossary": settings.expander.glossary,
                "glossary_variants": settings.expander.glossary_variants,
            },
            "sparse_idf": retriever.idf is not None,
        }
    report.update(
        dataset=dataset.name,
        bm25=baseline_from_readme(dataset),
        command=command_line("specrag eval"),
        split=split,
        model=service.model_id,
        ingest=ingest_report,
        machine=machine_description(f" {platform.python_implementation()}"),
        date=time.strftime("%Y-%m-%d"),
    )
    typer.echo(format_table(dataset.name, report))
    # The depth-100 lists are 10x the served top 10 (megabytes per collection); R@100 is in the means.
    report.pop("rankings@100", None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        typer.echo(f"report written to {out}")
    if markdown:
        from serve_app.devtools.common import replace_section

        if not out:
            raise typer.BadParameter("--markdown needs --out (the summary reads the JSON reports)")
        reports = [json.loads(f.read_text()) for f in sorted(out.parent.glob("eval-*.json"))]
        text = markdown.read_text() if markdown.exists() else ""
        text = replace_section(text, markdown_section(report, out))
        text = replace_section(text, summary_section(reports))
        markdown.write_text(replace_section(text, loco_section(reports, CANDIDATES)))
        typer.echo(f"{markdown} updated")


def _corpus_langs(dataset: Path) -> dict[str, str]:
    """Passage id -> lang from a BEIR corpus (for recall by answer language)."""
    langs: dict[str, str] = {}
    with (dataset / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if row.get("lang"):
                    langs[str(row["_id"])] = str(row["lang"])
    return langs
