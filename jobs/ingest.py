"""Ingest as a Ray job: ``ray job submit --working-dir . -- python -m jobs.ingest PATH [options]``.

The same code path as ``specrag ingest`` (chunk, embed in batches, write to Milvus), run on the
cluster so that the data engineer's laptop holds no model. ``--source NAME`` without PATH syncs a
git source registered in ``ingest.sources`` by commit (``--commit``), sharing its recorded state
with ``POST /v1/sources/{name}/sync``.
"""

from __future__ import annotations

import sys

from serve_app.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["ingest", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
