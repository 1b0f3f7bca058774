"""OpenAPI/Swagger specs -> one section per operation: trail, tags, fields, $refs, bounds, refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from serve_app.core.formats import Converted, Section, UnreadableDocument, convert, openapi

FIXTURES = Path(__file__).parents[3] / "fixtures" / "openapi"


def _convert(name: str) -> Converted:
    out = convert(name, (FIXTURES / name).read_bytes())
    assert out is not None
    return out


def _ops(out: Converted) -> dict[str, Section]:
    return {s.title_path[-1]: s for s in out.sections if s.title_path[-1] != "Overview"}


def _spec(paths: dict, **extra: object) -> bytes:
    return json.dumps(
        {"openapi": "3.1.0", "info": {"title": "T", "version": "1"}, "paths": paths, **extra}
    ).encode()


# ------------------------------------------------------------------------------- OpenAPI 3 (YAML)


def test_one_section_per_operation_with_trail_and_tags() -> None:
    out = _convert("orders.yaml")
    assert (out.fmt, out.kind, out.title) == ("sections", "api", "Orders API 1.4.0")
    ops = _ops(out)
    assert sorted(ops) == [
        "GET /orders",
        "GET /orders/{orderId}",
        "POST /orders",
        "POST /orders/{orderId}/cancel",
    ]
    cancel = ops["POST /orders/{orderId}/cancel"]
    assert cancel.title_path == ("Orders API", "orders", "POST /orders/{orderId}/cancel")
    assert cancel.tags == ("orders", "operation:cancelOrder")
    assert all(len(s.text) <= openapi.MAX_SECTION_CHARS for s in out.sections)


def test_overview_has_description_servers_and_tag_descriptions() -> None:
    overview = _convert("orders.yaml").sections[0]
    assert overview.title_path == ("Orders API", "Overview")
    assert "The HTTP interface of the online shop's order platform." in overview.text
    assert "https://api.example.com/v1 (Production)" in overview.text
    assert "- orders: Orders placed by customers at checkout." in overview.text


def test_operation_text_has_summary_parameters_body_and_responses() -> None:
    text = _ops(_convert("orders.yaml"))["POST /orders/{orderId}/cancel"].text
    lines = text.splitlines()
    assert lines[:4] == [
        "POST /orders/{orderId}/cancel",
        "Cancel an order",
        "operationId: cancelOrder",
        "Tags: orders",
    ]
    assert "releases its reserved stock" in text
    assert "Security: bearerAuth (orders:write)" in text
    # the path-level parameter (a $ref to components/parameters) merged with the operation's own
    assert "- orderId (path, string(uuid), required): The order's identifier." in lines
    assert any(line.startswith("- Idempotency-Key (header, string): A unique key") for line in lines)
    assert "Request body (application/json, required): CancelRequest" in lines
    assert (
        "- reason (string, required, enum: customer_request | out_of_stock | fraud_suspected): "
        "Why the order is cancelled." in lines
    )
    assert "- 200 (application/json): The order, now cancelled. → Order" in lines
    assert "- 404 (application/json): No order with this id. → Error" in lines  # components/responses
    assert "- 409 (application/json): The order has already shipped. → Error" in lines


def test_refs_resolve_nested_and_recursion_is_cut() -> None:
    ops = _ops(_convert("orders.yaml"))
    text = ops["GET /orders/{orderId}"].text
    # Order -> items: LineItem -> price: Money (three hops): the referenced schemas' fields appear
    assert "  - status (OrderStatus, required, enum: pending | paid | shipped | cancelled)" in text
    assert "    - sku (string, required): Stock keeping unit of the product." in text
    assert "      - amount (integer, required): In minor units (cents, yen)." in text
    # Order.replaces is an Order again; Category.parent a Category: cut with a marker, not expanded
    assert "  - replaces (Order): The order this one replaces, if any. (see Order)" in text
    assert "      - parent (Category) (see Category)" in text
    assert text.count("- replaces (") == 1
    # a parameter's schema $ref and a requestBodies $ref
    assert (
        "- status (query, OrderStatus, enum: pending | paid | shipped | cancelled)" in ops["GET /orders"].text
    )
    created = ops["POST /orders"].text
    assert "Request body (application/json, required): The items to order and where to ship them." in created
    assert "- shipping_address (Address, required)" in created and "  - postal_code (string)" in created
    assert "- limit (query, integer, default: 20): Orders per page." in ops["GET /orders"].text
    assert "  - next_cursor (string | null): Absent on the last page." in ops["GET /orders"].text


def test_ref_depth_is_bounded() -> None:
    schemas = {
        f"S{i}": {"type": "object", "properties": {f"f{i}": {"$ref": f"#/components/schemas/S{i + 1}"}}}
        for i in range(8)
    }
    schemas["S8"] = {"type": "object", "properties": {"leaf": {"type": "string"}}}
    ok = {
        "200": {
            "description": "ok",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/S0"}}},
        }
    }
    out = convert("deep.json", _spec({"/a": {"get": {"responses": ok}}}, components={"schemas": schemas}))
    assert out is not None
    text = out.sections[0].text
    assert f"f{openapi.REF_DEPTH - 1} (S{openapi.REF_DEPTH}) (see S{openapi.REF_DEPTH})" in text
    assert "leaf" not in text


# ------------------------------------------------------------------------------ Swagger 2.0 (JSON)


def test_swagger_2_operations_body_form_and_definitions() -> None:
    out = _convert("users.swagger.json")
    assert (out.kind, out.title) == ("api", "User Directory API 2.1.0")
    ops = _ops(out)
    assert len(ops) == 6
    reset = ops["POST /users/{userId}/password-reset"]
    assert reset.title_path == ("User Directory API", "users", "POST /users/{userId}/password-reset")
    assert reset.tags == ("users", "operation:resetPassword")
    assert "- userId (path, integer(int64), required): The user's numeric id." in reset.text  # #/parameters
    assert "Request body (application/json): PasswordReset" in reset.text
    assert "- notify (boolean, default: true): Send the reset link by e-mail." in reset.text
    create = ops["POST /users"].text
    assert "Request body (application/json, required): The new user's profile. → NewUser" in create
    assert "- email (string(email), required): Login and contact address." in create
    assert "- body (" not in create  # the body parameter is the request body, not a parameter
    # User is allOf [NewUser, {...}]: fields of both; its manager (a User) is cut
    assert "- 201 (application/json): The user was created. → User" in create
    assert "  - role (string, enum: admin | member | guest, default: member)" in create
    assert "  - id (integer(int64), required, read-only)" in create
    assert "  - manager (User) (see User)" in create
    assert "- 404 (application/json): No user with this id. → Error" in ops["GET /users/{userId}"].text
    avatar = ops["PUT /users/{userId}/avatar"]
    assert avatar.tags == ("users", "profiles", "operation:uploadAvatar")
    assert "Request body (multipart/form-data), form fields:" in avatar.text
    assert "- file (formData, file, required): A PNG or JPEG image up to 2 MB." in avatar.text
    listed = ops["GET /users"].text
    assert "- role (query, array of string, enum: admin | member | guest)" in listed
    assert "- 200 (application/json): The users. → array of User" in listed
    assert "Servers: https://users.example.com/api" in out.sections[0].text


# ---------------------------------------------------------------------------------------- bounds


def test_long_operation_is_cut_to_the_bound_with_a_marker() -> None:
    props = {f"field_{i}": {"type": "string", "description": "words " * 30} for i in range(200)}
    body = {"content": {"application/json": {"schema": {"type": "object", "properties": props}}}}
    out = convert(
        "big.json", _spec({"/big": {"post": {"summary": "Big", "requestBody": body, "responses": {}}}})
    )
    assert out is not None
    text = out.sections[0].text
    assert len(text) <= openapi.MAX_SECTION_CHARS
    assert text.startswith("POST /big\nBig") and text.endswith(openapi.TRUNCATED)


def test_deep_nesting_is_reduced_before_anything_is_cut() -> None:
    def nested(level: int) -> dict:
        props: dict = {f"n{level}_{i}": {"type": "string", "description": "x " * 20} for i in range(4)}
        if level < 5:
            props[f"child{level}"] = nested(level + 1)
        return {"type": "object", "properties": props}

    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": nested(0)}}}}
    many = {f"{code}": ok["200"] for code in (200, 201, 202, 203)}
    out = convert("nest.json", _spec({"/n": {"get": {"responses": many}}}))
    assert out is not None
    text = out.sections[0].text
    assert len(text) <= openapi.MAX_SECTION_CHARS and openapi.TRUNCATED not in text
    assert "- 203 (application/json): ok → object" in text  # every response kept, with less depth
    assert "{…}" in text


def test_yaml_merge_bomb_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        "openapi: 3.0.0",
        "info: {title: T, version: '1'}",
        "x0: &x0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6}",
    ]
    for i in range(1, 12):
        prev = f"*x{i - 1}"
        lines.append(f"x{i}: &x{i} {{<<: [{', '.join([prev] * 9)}], k{i}: 1}}")
    bomb = "\n".join([*lines, "paths: {}"]).encode()
    started = time.monotonic()
    try:  # PyYAML that dedupes merged keys reads it (no operations: None); older ones hit the cap
        assert convert("bomb.yaml", bomb) is None
    except UnreadableDocument as exc:
        assert "merges over" in str(exc)
    assert time.monotonic() - started < 5
    monkeypatch.setattr(openapi, "MAX_MERGED_KEYS", 5)  # the cap itself, whatever PyYAML does
    with pytest.raises(UnreadableDocument, match=r"does not parse: .*merges over 5 keys"):
        convert("bomb.yaml", bomb)


def test_alias_bomb_is_never_expanded() -> None:
    lines = ["openapi: 3.0.0", "info: {title: T, version: '1'}", "components:", "  schemas:"]
    lines.append("    L0: &L0 {type: string, description: leaf}")
    for i in range(1, 15):
        props = ", ".join(f"p{j}: *L{i - 1}" for j in range(9))
        lines.append(f"    L{i}: &L{i} {{type: object, properties: {{{props}}}}}")
    lines += [
        "paths:",
        "  /bomb:",
        "    get:",
        "      responses:",
        "        '200': {description: ok, content: {application/json: {schema: *L14}}}",
    ]
    started = time.monotonic()
    out = convert("aliases.yaml", "\n".join(lines).encode())
    assert out is not None and len(out.sections[0].text) <= openapi.MAX_SECTION_CHARS
    assert time.monotonic() - started < 5


def test_a_file_over_the_size_limit_is_not_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi, "MAX_BYTES", 100)
    with pytest.raises(UnreadableDocument, match="over the"):
        convert("orders.yaml", (FIXTURES / "orders.yaml").read_bytes())
    assert convert("config.yaml", b"# openapi generator settings\n" + b"key: value\n" * 50) is None


# ------------------------------------------------------------------------ what is no spec, or broken


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("ci.yaml", b"name: build\non: [push]\njobs:\n  test:\n    runs-on: ubuntu-latest\n"),
        ("gen.yml", b"openapi:\n  generator: typescript-fetch\n  output: src/api\n"),  # a config section
        ("package.json", b'{"name": "web", "devDependencies": {"openapi-typescript": "7.0.0"}}'),
        ("tsconfig.json", b'{\n  // comments are no JSON; nor is this an API\n  "swagger": true,\n}'),
        ("list.yaml", b"- openapi\n- swagger\n"),
        ("broken.yaml", b"swagger docs: [unclosed\n"),
        ("latin1.yaml", "openapi\u00e9".encode("latin-1")),
        (
            "components.yaml",
            b"openapi: 3.1.0\ninfo: {title: Shared, version: '1'}\ncomponents: {schemas: {}}\n",
        ),
    ],
)
def test_non_specs_convert_to_none(name: str, data: bytes) -> None:
    assert convert(name, data) is None


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("bad.yaml", b"openapi: 3.0.0\ninfo: {title: T\npaths: {}\n", "does not parse"),
        ("bad.json", b'{"openapi": "3.0.0", "info": {"title": "T"}, "paths": {,}}', "does not parse"),
        ("min.json", b'{"info": {"title": "T"}, "openapi": "3.0.0", "paths": [}', "does not parse"),
        ("old.yaml", b"swagger: '1.2'\ninfo: {title: T}\n", "not read"),
        ("future.json", b'{"openapi": "4.0.0", "info": {"title": "T"}}', "not read"),
        ("noinfo.yaml", b"openapi: 3.0.0\npaths: {}\n", "without an info object"),
        ("paths.yaml", b"openapi: 3.0.0\ninfo: {title: T, version: '1'}\npaths: [/a, /b]\n", "not a mapping"),
        (
            "item.yaml",
            b"openapi: 3.0.0\ninfo: {title: T, version: '1'}\npaths: {/a: 3}\n",
            "/a is not a mapping",
        ),
        ("op.yaml", b"openapi: 3.0.0\ninfo: {title: T, version: '1'}\npaths: {/a: {get: yes}}\n", "GET /a"),
    ],
)
def test_malformed_specs_are_unreadable(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableDocument, match=reason):
        convert(name, data)


def test_openapi_31_types_and_no_tags() -> None:
    schema = {"type": "object", "properties": {"note": {"type": ["string", "null"]}, "v": {"const": 2}}}
    op = {
        "operationId": "ping",
        "responses": {"200": {"description": "pong", "content": {"application/json": {"schema": schema}}}},
    }
    out = convert("ping.json", _spec({"/ping": {"get": op}, "x-internal": True}))
    assert out is not None and len(out.sections) == 1  # no description, no tag descriptions: no overview
    section = out.sections[0]
    assert section.title_path == ("T", "default", "GET /ping") and section.tags == ("operation:ping",)
    assert "  - note (string | null)" in section.text and "  - v (any, const: 2)" in section.text
