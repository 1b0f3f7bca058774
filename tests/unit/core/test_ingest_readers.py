from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.core.ingest import chunk_id, iter_documents


def test_folder_reader_uses_front_matter(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "---\ndoc_id: auth\ntitle: 認証\nkind: spec\ntags: [security]\n---\n# 認証\n本文。\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("plain text.")
    (tmp_path / "ignored.bin").write_bytes(b"\0")
    docs = {d.doc_id: d for d in iter_documents(tmp_path)}
    assert set(docs) == {"auth", "sub/b.txt"}
    assert docs["auth"].kind == "spec" and docs["auth"].tags == ["security"] and docs["auth"].title == "認証"
    assert docs["auth"].text.startswith("# 認証") and docs["sub/b.txt"].fmt == "text"


def test_front_matter_lang_and_single_file(tmp_path: Path) -> None:
    (tmp_path / "g.md").write_text("---\ndoc_id: g\nlang: ja\ntags: one\nkind: Weird\n---\nbody\n")
    (doc,) = iter_documents(tmp_path / "g.md")
    assert (doc.doc_id, doc.lang, doc.tags, doc.kind) == ("g", "ja", ["one"], "other")


def test_beir_reader_and_errors(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        json.dumps({"_id": "d1", "title": "T", "text": "x", "lang": "ja", "tags": "t"}) + "\n\n"
    )
    (doc,) = iter_documents(tmp_path)
    assert (doc.doc_id, doc.tags, doc.lang) == ("d1", ["t"], "ja")
    corpus.write_text('{"title": "no id"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:1"):
        list(iter_documents(corpus))
    with pytest.raises(ValueError, match="expected a folder"):
        iter_documents(tmp_path / "missing.pdf")


def test_chunk_ids_are_stable_and_distinct() -> None:
    assert chunk_id("d", 1, 0) == chunk_id("d", 1, 0)
    assert len({chunk_id("d", 1, 0), chunk_id("d", 2, 0), chunk_id("d", 1, 1)}) == 3


def test_git_checkout_reads_tracked_files_only(tmp_path: Path) -> None:
    from serve_app.core.ingest import git_revision
    from serve_app.testing.gitrepo import ScratchRepo

    scratch = ScratchRepo(tmp_path / "docs")
    scratch.write("api/auth.md", "# Auth\nTokens live 15 minutes.\n")
    scratch.write(".github/notes.md", "# CI notes\n")
    scratch.commit("docs")
    repo = scratch.root
    (repo / "draft.md").write_text("# Untracked draft\n")  # not committed: not a document
    docs = {d.doc_id for d in iter_documents(repo)}
    assert docs == {"api/auth.md"}, "tracked, non-hidden files only"
    assert len(git_revision(repo) or "") == 40
