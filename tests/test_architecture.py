"""The layout's rules, checked on the code's own imports (function-level imports included).

The contracts live in pyproject.toml (import-linter); this test runs them inside `make test` and
adds what import-linter has no contract for: zero import cycles between any two modules, and
route handlers short enough to be read as mappings.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("serve_app", "deployments", "jobs")


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " 0 broken" in done.stdout, done.stdout[-2000:]


def test_no_import_cycles() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            # a package importing its own submodule (or the reverse) is how packages work, not a cycle
            if imported.startswith(importer + ".") or importer.startswith(imported + "."):
                continue
            chain = graph.find_shortest_chain(importer=imported, imported=importer)
            if chain:
                cycles.append(" -> ".join([importer, *chain]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:20])


def test_route_handlers_are_short_mappings() -> None:
    long = []
    for path in (ROOT / "serve_app" / "http" / "routes").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "attr", "") in ("get", "post", "delete", "put")
                for d in node.decorator_list
            ):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                lines = body[-1].end_lineno - body[0].lineno + 1  # type: ignore[operator]
                if lines > 40:
                    long.append(f"{path.name}:{node.name} {lines} lines")
    assert not long, long


def test_nothing_outside_the_graph_imports_a_deployment() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    outside = {
        (importer, imported)
        for imported in graph.find_children("deployments")
        for importer in graph.find_modules_that_directly_import(imported)
        if not importer.startswith("deployments") and importer != "serve_app.app"
    }
    assert not outside, sorted(outside)
