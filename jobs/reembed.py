"""Full re-embed as a Ray job: ``ray job submit --working-dir . -- python -m jobs.reembed [options]``.

Same as ``specrag reindex``: reads the live collection's current chunks, embeds them with a Ray
Data actor pool (``--num-gpus`` per actor on GPU nodes) into a new collection, validates it and
switches the alias. Watch it with ``specrag reindex --status --watch`` from anywhere that reaches
Milvus, or ``ray job logs -f``.
"""

from __future__ import annotations

import sys

from serve_app.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["reindex", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
