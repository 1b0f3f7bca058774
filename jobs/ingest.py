"""Ingest as a Ray job: ``ray job submit --working-dir . -- python -m jobs.ingest PATH [options]``.

The same code path as ``specrag ingest`` (chunk, embed in batches, write to Milvus), run on the
cluster so that the data engineer's laptop holds no model. Parallel re-embeds over Ray Data
arrive with the index-maintenance work.
"""

from __future__ import annotations

import sys

from serve_app.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["ingest", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
