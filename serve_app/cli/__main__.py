"""``python -m serve_app.cli ...``, as the reliability suite's ingest job runs it: same as ``specrag``."""

from serve_app.cli import main

main()
