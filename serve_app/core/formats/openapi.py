"""OpenAPI 3.0/3.1 and Swagger 2.0 specs (YAML or JSON) -> one section per operation.

A question about an endpoint ("how do I cancel an order?") is best answered by one chunk that holds
the whole operation: method and path, summary, parameters, request body and responses, with the
schemas they point to spelled out. So each operation becomes one ``Section`` (kept whole by the
ingest), its trail ``(API title, first tag, "POST /orders/{id}/cancel")`` and its tags the
operation's tags plus ``operation:<operationId>``. An overview section carries the API's own
description, servers and tag descriptions when it has any.

Which files are specs: a mapping whose top-level ``openapi`` is 3.x or ``swagger`` is 2.0. Any other
YAML/JSON (CI config, package.json) converts to ``None`` and is skipped. A file that claims to be a
spec but cannot be read (does not parse, an unsupported version, no ``info``, ``paths`` that are no
mapping) raises ``UnreadableDocument`` naming why.

Why the ``$ref`` resolution is our own: ``jsonref`` resolves lazily but without bounds (a recursive
schema is an endless proxy) and ``prance`` resolves whole documents, fetches remote refs and brings
a validator stack. A chunk needs less and stricter: local refs only, at most ``REF_DEPTH`` hops down
a chain, a cycle cut with a readable ``(see Order)``, and a walk that stops at a character budget.
That bounding would have to be written around either library anyway, and it is most of the code.

Untrusted input: files over ``MAX_BYTES`` are not parsed; YAML is loaded safely (no tags that build
objects) and a merge key (``<<``) may not grow a mapping past ``MAX_MERGED_KEYS`` (merges of merges
grow exponentially in PyYAML releases that copy merged keys instead of deduplicating them). Plain
aliases share one object instead of copying it, and every walk here is bounded by depth and by the
output budget, so an alias bomb is never expanded.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

import yaml

from serve_app.core.formats.base import Converted, Section, UnreadableDocument

try:  # libyaml parses a large spec many times faster; the constructor (and its checks) stay Python
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

__all__ = ["MAX_BYTES", "MAX_SECTION_CHARS", "REF_DEPTH", "convert"]

MAX_BYTES = 8 * 1024 * 1024  # larger files are not parsed (a claimed spec fails, anything else is skipped)
MAX_SECTION_CHARS = 4000  # one operation is embedded as one chunk
REF_DEPTH = 3  # $ref hops expanded down one chain of schemas; deeper ones read "(see Name)"
MAX_NESTING = 4  # levels of nested fields shown (lowered step by step when an operation is too long)
MAX_DESCRIPTION = 1500  # an operation's or API's own description
MAX_FIELD_DESCRIPTION = 300  # a parameter's or property's description
MAX_ENUM = 20
MAX_VARIANTS = 6  # oneOf/anyOf alternatives shown
MAX_MERGED_KEYS = 10_000
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
TRUNCATED = "[… truncated]"

# A top-level openapi/swagger key with a version, in YAML (at column 0) or JSON: only consulted when
# the file does not parse, to tell a broken spec (fails) from some other broken file (skipped).
_CLAIM = re.compile(
    r"""^["']?(?:openapi|swagger)["']?[ \t]*:[ \t]*["']?\d"""  # YAML, a top-level key
    r"""|^[ \t]*\{?[ \t]*"(?:openapi|swagger)"[ \t]*:[ \t]*"?\d"""  # JSON, one key a line
    r"""|[{,][ \t\r\n]*"(?:openapi|swagger)"[ \t\r\n]*:[ \t\r\n]*"\d""",  # JSON on one line
    re.MULTILINE,
)
_WS = re.compile(r"[ \t\r\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


class _SpecLoader(_BaseLoader):
    """Safe loading whose merge keys cannot grow a mapping without bound (a YAML bomb)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)  # recursive through self: every merged level is checked
        if len(node.value) > MAX_MERGED_KEYS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping merges over {MAX_MERGED_KEYS} keys", node.start_mark
            )


class _ParseError(Exception):
    pass


class _Full(Exception):
    """The output budget is spent: the walk stops here."""


def convert(data: bytes, name: str) -> Converted | None:
    """One spec file -> an overview and one section per operation; ``None`` if it is no spec."""
    base = PurePosixPath(name).name
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if _CLAIM.search(data[:65536].decode("utf-8", errors="replace")):
            raise UnreadableDocument(f"{base} looks like an OpenAPI spec but is not UTF-8") from None
        return None
    if "openapi" not in text and "swagger" not in text:
        return None  # most config files: not worth parsing
    if len(data) > MAX_BYTES:
        if _CLAIM.search(text[:65536]):
            raise UnreadableDocument(
                f"{base} is an OpenAPI spec of {len(data) / 2**20:.1f} MiB, over the "
                f"{MAX_BYTES // 2**20} MiB that are read"
            )
        return None
    try:
        doc = _parse(text, name)
    except _ParseError as exc:
        if _CLAIM.search(text):
            raise UnreadableDocument(f"{base} looks like an OpenAPI spec but does not parse: {exc}") from exc
        return None
    version = _spec_version(doc)
    if version is None:
        return None
    assert isinstance(doc, dict)  # _spec_version says so
    return _Spec(doc, version, base).convert()


def _parse(text: str, name: str) -> object:
    """JSON for .json (exact and fast), YAML otherwise; any failure is a ``_ParseError``."""
    try:
        if name.lower().endswith(".json"):
            return json.loads(text)
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: no object-building tags
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        reason = str(exc).strip().replace("\n", " ") or type(exc).__name__
        raise _ParseError(_WS.sub(" ", reason)[:300]) from exc


def _spec_version(doc: object) -> tuple[str, str] | None:
    """``("openapi", "3.0.3")`` / ``("swagger", "2.0")`` for a spec; None for anything else."""
    if not isinstance(doc, dict):
        return None
    for key in ("openapi", "swagger"):
        if key not in doc:
            continue
        value = doc[key]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None  # a config's own "openapi:" section
        version = str(value).strip()
        if not re.fullmatch(r"\d+(\.\d+)*(-[\w.]+)?", version):
            return None
        major = version.split(".")[0]
        if (key == "openapi" and major == "3") or (key == "swagger" and version in ("2", "2.0")):
            return key, version
        raise UnreadableDocument(f"{key} {version} is not read (OpenAPI 3.x and Swagger 2.0 are)")
    return None


# ---------------------------------------------------------------------------------- text helpers


def _one_line(value: object, limit: int = MAX_FIELD_DESCRIPTION) -> str:
    """A description as one line (fields are listed one per line), cut at ``limit``."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    text = _WS.sub(" ", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _paragraphs(value: object, limit: int = MAX_DESCRIPTION) -> str:
    """A long description with its paragraphs (Markdown lists read better unflattened), cut."""
    if not isinstance(value, str):
        return ""
    text = _BLANK_LINES.sub("\n\n", value.strip())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str | int | float):
        return _one_line(value, 60)
    return _one_line(json.dumps(value, ensure_ascii=False, default=str), 60)


def _enum(values: object) -> str:
    if not isinstance(values, list) or not values:
        return ""
    shown = " | ".join(_scalar(v) for v in values[:MAX_ENUM])
    return f"enum: {shown}" + (" | …" if len(values) > MAX_ENUM else "")


def _ref_name(ref: str) -> str:
    return unquote(ref.rsplit("/", 1)[-1]).replace("~1", "/").replace("~0", "~") or ref


def _strings(value: object) -> list[str]:
    """The non-empty strings of a list (tags, scopes, media types); nothing for a non-list."""
    return [v.strip() for v in value if isinstance(v, str) and v.strip()] if isinstance(value, list) else []


def _dicts(value: object) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, dict))


# ------------------------------------------------------------------------------------- the spec


@dataclass
class _Out:
    """Lines of one section; adding past ``cap`` raises ``_Full`` (bounds the walk, not the text)."""

    cap: int
    lines: list[str] = field(default_factory=list)
    size: int = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        if self.size > self.cap:
            raise _Full

    def text(self) -> str:
        return "\n".join(self.lines).strip()


@dataclass
class _View:
    """An object schema's fields after ``allOf`` merging: (name, schema, ref chain) and required names."""

    fields: list[tuple[str, Any, tuple[str, ...]]] = field(default_factory=list)
    required: set[str] = field(default_factory=set)
    variants: list[tuple[Any, tuple[str, ...]]] = field(default_factory=list)  # oneOf/anyOf


class _Spec:
    """One parsed spec; renders its sections (the walk's state, ``nesting`` and ``out``, is per section)."""

    def __init__(self, doc: dict[str, Any], version: tuple[str, str], name: str) -> None:
        self.doc = doc
        self.swagger = version[0] == "swagger"
        self.name = name
        info = doc.get("info")
        if not isinstance(info, dict):
            raise UnreadableDocument(f"{name} is an OpenAPI spec without an info object")
        self.info = info
        self.title = _one_line(info.get("title"), 200) or PurePosixPath(name).stem
        self.api_version = _one_line(info.get("version"), 40)
        paths = doc.get("paths")
        if paths is not None and not isinstance(paths, dict):
            raise UnreadableDocument(f"{name}: paths is a {type(paths).__name__}, not a mapping")
        self.paths: dict[Any, Any] = paths or {}
        self.nesting = MAX_NESTING
        self.out = _Out(0)

    # ----------------------------------------------------------------------------- sections

    def convert(self) -> Converted | None:
        sections = [s for s in (self._overview(), *self._operations()) if s is not None]
        if not sections:
            return None  # a components-only file (3.1): no operation to find
        title = f"{self.title} {self.api_version}".strip()
        return Converted(fmt="sections", sections=sections, kind="api", title=title)

    def _operations(self) -> Iterator[Section]:
        for path, item in self.paths.items():
            if item is None or str(path).startswith("x-"):  # an extension, no path
                continue
            resolved = self._deref(item)
            if not isinstance(resolved, dict):
                raise UnreadableDocument(f"{self.name}: path {path} is not a mapping")
            shared = list(_dicts(resolved.get("parameters")))
            for method in METHODS:
                op = resolved.get(method)
                if op is None:
                    continue
                label = f"{method.upper()} {path}"
                if not isinstance(op, dict):
                    raise UnreadableDocument(f"{self.name}: {label} is not a mapping")
                tags = _strings(op.get("tags"))
                op_id = op.get("operationId")
                section_tags = list(dict.fromkeys(tags))
                if isinstance(op_id, str) and op_id.strip():
                    section_tags.append(f"operation:{op_id.strip()}")
                yield Section(
                    title_path=(self.title, tags[0] if tags else "default", label),
                    text=self._fit(partial(self._operation, label, op, shared)),
                    tags=tuple(section_tags),
                )

    def _fit(self, render: Callable[[], None]) -> str:
        """Render with less nested detail until the text fits ``MAX_SECTION_CHARS``; then cut it."""
        text = ""
        for nesting in (MAX_NESTING, 2, 1, 0):
            self.nesting, self.out = nesting, _Out(2 * MAX_SECTION_CHARS)
            with contextlib.suppress(_Full):  # the walk stopped at the cap; the text shows how far
                render()
            text = self.out.text()
            if len(text) <= MAX_SECTION_CHARS:
                return text
        cut = text[: MAX_SECTION_CHARS - len(TRUNCATED) - 1]
        if "\n" in cut:  # at a line end: no half field
            cut = cut[: cut.rfind("\n")]
        return cut + "\n" + TRUNCATED

    def _overview(self) -> Section | None:
        tags = [t for t in _dicts(self.doc.get("tags")) if isinstance(t.get("name"), str)]
        described = [t for t in tags if _one_line(t.get("description"))]
        if not _paragraphs(self.info.get("description")) and not described:
            return None

        def render() -> None:
            add = self.out.add
            add(f"{self.title} {self.api_version}".strip())
            if summary := _one_line(self.info.get("summary")):
                add(summary)
            if description := _paragraphs(self.info.get("description")):
                add(description)
            if servers := self._servers():
                add("Servers: " + "; ".join(servers))
            if described:
                add("Tags:")
                for t in described:
                    add(f"- {t['name']}: {_one_line(t.get('description'))}")

        return Section(title_path=(self.title, "Overview"), text=self._fit(render))

    def _servers(self) -> list[str]:
        if self.swagger:
            host = self.doc.get("host")
            if not isinstance(host, str):
                return []
            base = self.doc.get("basePath") if isinstance(self.doc.get("basePath"), str) else ""
            schemes = _strings(self.doc.get("schemes")) or ["https"]
            return [f"{schemes[0]}://{host}{base}"]
        out = []
        for server in _dicts(self.doc.get("servers")):
            url = _one_line(server.get("url"), 200)
            if url:
                note = _one_line(server.get("description"), 100)
                out.append(f"{url} ({note})" if note else url)
        return out

    # ---------------------------------------------------------------------------- operation

    def _operation(self, label: str, op: dict[str, Any], shared: list[dict[str, Any]]) -> None:
        add = self.out.add
        add(label)
        if summary := _one_line(op.get("summary")):
            add(summary)
        if isinstance(op.get("operationId"), str):
            add(f"operationId: {_one_line(op['operationId'], 120)}")
        tags = _strings(op.get("tags"))
        if tags:
            add("Tags: " + ", ".join(tags))
        if op.get("deprecated") is True:
            add("Deprecated.")
        if description := _paragraphs(op.get("description")):
            add(description)
        if security := self._security(op):
            add(f"Security: {security}")
        params = self._parameters(shared, op.get("parameters"))
        body = [p for p in params if p.get("in") == "body"]
        form = [p for p in params if p.get("in") == "formData"]
        plain = [p for p in params if p.get("in") not in ("body", "formData")]
        if plain:
            add("")
            add("Parameters:")
            for p in plain:
                self._parameter(p)
        if body or form or (not self.swagger and op.get("requestBody") is not None):
            add("")
            self._request(op, body[0] if body else None, form)
        responses = op.get("responses")
        if isinstance(responses, dict) and responses:
            add("")
            add("Responses:")
            for status, response in responses.items():
                self._response(str(status), response, op)

    def _security(self, op: dict[str, Any]) -> str:
        requirements = op.get("security", self.doc.get("security"))
        if not isinstance(requirements, list):
            return ""
        if not requirements:
            return "none"
        options = []
        for req in _dicts(requirements):
            if not req:
                options.append("none")
                continue
            parts = []
            for scheme, scopes in list(req.items())[:5]:
                names = _strings(scopes)
                parts.append(f"{scheme} ({', '.join(names[:8])})" if names else str(scheme))
            options.append(" + ".join(parts))
        return " or ".join(options[:5])

    def _parameters(self, shared: list[dict[str, Any]], own: object) -> list[dict[str, Any]]:
        """Path-level parameters merged with the operation's (which win on the same name and place)."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for raw in [*shared, *_dicts(own)]:
            p = self._deref(raw)
            if isinstance(p, dict) and isinstance(p.get("name"), str | int):
                merged[(str(p.get("in")), str(p["name"]))] = p
        return list(merged.values())

    def _parameter(self, p: dict[str, Any]) -> None:
        schema: Any = p.get("schema")
        if schema is None and isinstance(p.get("content"), dict):  # 3.x: a parameter as a media type
            schema = next((m.get("schema") for m in p["content"].values() if isinstance(m, dict)), None)
        if schema is None:  # 2.0: the type sits on the parameter itself
            schema = {k: p[k] for k in ("type", "format", "items", "enum", "default") if k in p}
        self._field(
            str(p["name"]),
            schema,
            (),
            required=p.get("required") is True,
            place=str(p.get("in")),
            description=p.get("description"),
            indent=0,
            level=0,
            extra=p,
        )

    def _request(self, op: dict[str, Any], body: dict[str, Any] | None, form: list[dict[str, Any]]) -> None:
        add = self.out.add
        if self.swagger:
            types = _strings(op.get("consumes", self.doc.get("consumes")))
            if body is not None:
                media = ", ".join(types[:3]) or "application/json"
                self._payload(
                    "Request body",
                    media,
                    body.get("required") is True,
                    body.get("description"),
                    body.get("schema"),
                )
            if form:
                media = next((t for t in types if "form" in t), "application/x-www-form-urlencoded")
                add(f"Request body ({media}), form fields:")
                for p in form:
                    self._parameter(p)
            return
        request = self._deref(op.get("requestBody"))
        if not isinstance(request, dict):
            return
        content = request.get("content")
        groups = self._media_groups(content)
        if not groups:
            self._payload(
                "Request body", "", request.get("required") is True, request.get("description"), None
            )
        for media, schema in groups:
            self._payload(
                "Request body", media, request.get("required") is True, request.get("description"), schema
            )

    def _response(self, status: str, raw: object, op: dict[str, Any]) -> None:
        response = self._deref(raw)
        if not isinstance(response, dict):
            self.out.add(f"- {status}")
            return
        if self.swagger:
            types = _strings(op.get("produces", self.doc.get("produces")))
            schema = response.get("schema")
            groups = [(", ".join(types[:3]), schema)] if schema is not None else []
        else:
            groups = self._media_groups(response.get("content"))
        description = _one_line(response.get("description"))
        if not groups:
            self.out.add(f"- {status}: {description}" if description else f"- {status}")
        for media, schema in groups:
            self._payload(f"- {status}", media, False, description, schema, indent=1)

    def _media_groups(self, content: object) -> list[tuple[str, Any]]:
        """(media types, schema) for each distinct schema: JSON and XML of one schema render once."""
        if not isinstance(content, dict):
            return []
        groups: dict[str, tuple[list[str], Any]] = {}
        for media, entry in content.items():
            schema = entry.get("schema") if isinstance(entry, dict) else None
            key = (
                schema["$ref"]
                if isinstance(schema, dict) and isinstance(schema.get("$ref"), str)
                else (str(id(schema)))
            )
            groups.setdefault(key, ([], schema))[0].append(str(media))
        return [(", ".join(types[:3]), schema) for types, schema in groups.values()]

    def _payload(
        self, head: str, media: str, required: bool, description: object, schema: object, indent: int = 0
    ) -> None:
        """A request body or a response: a head line with the schema's name, then its fields."""
        parts = [p for p in (media, "required" if required else "") if p]
        line = f"{head} ({', '.join(parts)})" if parts else head
        text = _one_line(description)
        if schema is not None:
            label = self._label(schema, ())
            line += f": {text} → {label}" if text else f": {label}"
        elif text:
            line += f": {text}"
        self.out.add(line)
        if schema is not None:
            self._children(schema, (), indent, 0)

    # ------------------------------------------------------------------------------- schemas

    def _lookup(self, ref: str) -> object:
        """A local JSON pointer (``#/components/schemas/Order``); None for a remote or broken one."""
        if not ref.startswith("#/"):
            return None
        node: object = self.doc
        for raw in ref[2:].split("/"):
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict):
                if part in node:
                    node = node[part]
                elif part.isdigit() and int(part) in node:  # YAML read `200:` as a number
                    node = node[int(part)]
                else:
                    return None
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    def _deref(self, obj: object, hops: int = 5) -> object:
        """A parameter, response, request body or path item behind its ``$ref``s (a few hops)."""
        while isinstance(obj, dict) and isinstance(obj.get("$ref"), str) and hops > 0:
            obj, hops = self._lookup(obj["$ref"]), hops - 1
        return obj

    def _resolve(self, schema: object, chain: tuple[str, ...]) -> tuple[Any, tuple[str, ...], str | None]:
        """The schema behind its ``$ref``s, the ref chain grown by them, and the cut ref's name if
        the walk stops here (a cycle, ``REF_DEPTH`` reached, a remote or broken ref)."""
        hops = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            ref = schema["$ref"]
            if ref in chain or len(chain) >= REF_DEPTH or hops > 5:
                return schema, chain, _ref_name(ref)
            target = self._lookup(ref)
            if not isinstance(target, dict):
                return schema, chain, _ref_name(ref)
            schema, chain, hops = target, (*chain, ref), hops + 1
        return schema, chain, None

    def _label(self, schema: object, chain: tuple[str, ...], depth: int = 0) -> str:
        """A compact type: ``Order``, ``array of OrderItem``, ``string(date-time)``, ``Cat | Dog``."""
        if not isinstance(schema, dict):
            return "any"
        if isinstance(schema.get("$ref"), str):
            return _ref_name(schema["$ref"])
        if depth > 3:
            return "…"
        kind = schema.get("type")
        kinds = [k for k in kind if isinstance(k, str)] if isinstance(kind, list) else []
        if isinstance(kind, str):
            kinds = [kind]
        if schema.get("nullable") is True and "null" not in kinds:
            kinds.append("null")
        for combiner, joiner in (("oneOf", " | "), ("anyOf", " | "), ("allOf", " & ")):
            parts = list(_dicts(schema.get(combiner)))
            if parts:
                names = [self._label(p, chain, depth + 1) for p in parts[:MAX_VARIANTS]]
                names = [n for n in names if n not in ("object", "any")] or ["object"]
                label = joiner.join(names)
                return f"{label} | null" if "null" in kinds else label
        labels = []
        for k in kinds or (["object"] if "properties" in schema or "additionalProperties" in schema else []):
            if k == "array":
                labels.append(f"array of {self._label(schema.get('items'), chain, depth + 1)}")
            elif (
                k == "object"
                and "properties" not in schema
                and isinstance(schema.get("additionalProperties"), dict)
            ):
                labels.append(f"map of {self._label(schema['additionalProperties'], chain, depth + 1)}")
            elif isinstance(schema.get("format"), str) and k != "null":
                labels.append(f"{k}({schema['format']})")
            else:
                labels.append(k)
        if not labels and "enum" in schema:
            return "enum"
        return " | ".join(labels) or "any"

    def _target(self, schema: object, chain: tuple[str, ...]) -> tuple[Any, tuple[str, ...], str | None]:
        """The schema whose fields are listed under ``schema``: itself, an array's items, a map's values."""
        for _ in range(4):
            schema, chain, cut = self._resolve(schema, chain)
            if cut or not isinstance(schema, dict):
                return schema, chain, cut
            if schema.get("type") == "array" or ("items" in schema and "properties" not in schema):
                schema = schema.get("items")
            elif "properties" not in schema and isinstance(schema.get("additionalProperties"), dict):
                schema = schema["additionalProperties"]
            else:
                return schema, chain, None
        return None, chain, None

    def _view(self, schema: dict[str, Any], chain: tuple[str, ...], depth: int = 0) -> _View:
        """Fields of an object schema with its ``allOf`` parts merged in; oneOf/anyOf as variants."""
        view = _View()
        for part in _dicts(schema.get("allOf")):
            resolved, sub_chain, cut = self._resolve(part, chain)
            if cut is None and isinstance(resolved, dict) and depth < 4:
                inner = self._view(resolved, sub_chain, depth + 1)
                view.fields.extend(inner.fields)
                view.required |= inner.required
                view.variants.extend(inner.variants)
        props = schema.get("properties")
        if isinstance(props, dict):
            view.fields.extend((str(k), v, chain) for k, v in props.items())
        required = schema.get("required")
        if isinstance(required, list):
            view.required |= {str(r) for r in required if isinstance(r, str | int)}
        for combiner in ("oneOf", "anyOf"):
            view.variants.extend((v, chain) for v in list(_dicts(schema.get(combiner)))[:MAX_VARIANTS])
        seen: dict[str, int] = {}
        for i, (name, _, _) in enumerate(view.fields):  # a later definition of a name wins
            seen[name] = i
        view.fields = [f for i, f in enumerate(view.fields) if seen[f[0]] == i]
        return view

    def _children(self, schema: object, chain: tuple[str, ...], indent: int, level: int) -> None:
        """The fields under ``schema`` (an object's, an array's items'), indented, to ``self.nesting``."""
        target, chain, cut = self._target(schema, chain)
        if cut or not isinstance(target, dict) or level > self.nesting:
            return
        view = self._view(target, chain)
        for name, sub, sub_chain in view.fields:
            self._field(name, sub, sub_chain, required=name in view.required, indent=indent, level=level)
        pad = "  " * indent
        for variant, variant_chain in view.variants:
            label = self._label(variant, variant_chain)
            _, _, sub_cut = self._target(variant, variant_chain)
            if sub_cut:
                self.out.add(f"{pad}- one of: {label} (see {sub_cut})")
                continue
            self.out.add(f"{pad}- one of: {label}")
            if level < self.nesting:
                self._children(variant, variant_chain, indent + 1, level + 1)

    def _field(
        self,
        name: str,
        schema: object,
        chain: tuple[str, ...],
        *,
        required: bool,
        indent: int,
        level: int,
        place: str = "",
        description: object = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """One line for a parameter or property (name, place, type, flags, enum, description), then
        its own fields when it is an object (or an array of objects) and nesting allows."""
        resolved, _, _ = self._resolve(schema, chain)
        own = schema if isinstance(schema, dict) else {}
        resolved = resolved if isinstance(resolved, dict) else {}
        flags = [f for f in (place, self._label(schema, chain)) if f]
        if required:
            flags.append("required")
        for key, flag in (
            ("readOnly", "read-only"),
            ("writeOnly", "write-only"),
            ("deprecated", "deprecated"),
        ):
            if own.get(key) is True or resolved.get(key) is True or (extra or {}).get(key) is True:
                flags.append(flag)
        values = own.get("enum", resolved.get("enum"))
        if values is None and resolved.get("type") == "array":  # an array of enumerated values
            items, _, _ = self._resolve(resolved.get("items"), chain)
            values = items.get("enum") if isinstance(items, dict) else None
        if enum := _enum(values):
            flags.append(enum)
        if "const" in resolved:  # 3.1
            flags.append(f"const: {_scalar(resolved['const'])}")
        default = own.get("default", resolved.get("default"))
        if default is not None and not isinstance(default, dict | list):
            flags.append(f"default: {_scalar(default)}")
        line = f"{'  ' * indent}- {name} ({', '.join(flags)})"
        text = (
            _one_line(description)
            or _one_line(own.get("description"))
            or _one_line(resolved.get("description"))
        )
        if text:
            line += f": {text}"
        target, _, cut = self._target(schema, chain)
        has_fields = isinstance(target, dict) and bool(
            target.get("properties") or target.get("allOf") or target.get("oneOf") or target.get("anyOf")
        )
        if cut:
            line += f" (see {cut})"
        elif has_fields and level >= self.nesting:
            line += " {…}"
        self.out.add(line)
        if has_fields and not cut and level < self.nesting:
            self._children(schema, chain, indent + 1, level + 1)
