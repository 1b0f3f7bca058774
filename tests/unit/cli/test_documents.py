"""``specrag ingest`` / ``delete``: what they check before touching Milvus, and ``--status``'s output."""

from __future__ import annotations

from typer.testing import CliRunner

from serve_app.cli import app
from serve_app.cli.documents import print_status

runner = CliRunner()


class _Meta:
    def __init__(self, rows: dict[str, dict]) -> None:
        self.rows = rows

    def list(self, kind: str) -> dict:
        return self.rows.get(kind, {})


def test_ingest_needs_a_path_unless_status(monkeypatch) -> None:
    import serve_app.cli.documents as documents

    monkeypatch.setattr(
        documents, "open_store", lambda *a, **k: (_ for _ in ()).throw(AssertionError("store"))
    )
    result = runner.invoke(app, ["ingest"])
    assert result.exit_code == 2
    assert "PATH is required unless --status is given" in result.output


def test_ingest_rejects_a_missing_path() -> None:
    result = runner.invoke(app, ["ingest", "/no/such/folder"])
    assert result.exit_code == 2


def test_delete_needs_document_ids() -> None:
    assert runner.invoke(app, ["delete"]).exit_code == 2


def _run(run_id: str, started_at: float, **over) -> dict:
    row = {
        "run_id": run_id,
        "state": "done",
        "started_at": started_at,
        "seconds": 12,
        "done": 10,
        "pending": 0,
        "failed_documents": 1,
        "success_rate": 0.9,
        "chunks_embedded": 30,
        "chunks_reused": 5,
        "unchanged": 2,
        "origin": "/docs@abc123",
    }
    return row | over


def test_status_lists_newest_runs_first_and_failed_documents(capsys) -> None:
    runs = {f"r{i}": _run(f"r{i}", 1_700_000_000 + i) for i in range(7)}
    failed = {"doc-a": {"errors": [{"ordinal": 3, "error": "timeout"}]}, "doc-b": {}}
    print_status(_Meta({"run": runs, "failed": failed}))
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[:5]] == ["r6", "r5", "r4", "r3", "r2"]  # the five newest
    assert "success rate 90.0%; 30 chunks embedded, 5 reused, 2 documents unchanged  [/docs@abc123]" in out[0]
    assert out[5] == "2 documents recorded as failed"
    assert out[6] == "  doc-a: chunk 3: timeout" and out[7] == "  doc-b: chunk None: None"


def test_status_without_runs(capsys) -> None:
    print_status(_Meta({}))
    assert capsys.readouterr().out.splitlines() == [
        "no ingest runs recorded",
        "0 documents recorded as failed",
    ]
