"""The API reference page's content, read from the app's own OpenAPI description.

The portal renders `/docs` itself instead of FastAPI's Swagger UI, which loads its JavaScript and
styles from a public CDN: a council's portal must work on a closed network, and a visitor's
browser should not call a third party to read how the API works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Parameter:
    name: str
    where: str  # path or query
    required: bool
    type: str
    rules: str  # allowed values, bounds, length
    default: str
    description: str


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    description: str
    parameters: list[Parameter] = field(default_factory=list)
    responses: list[tuple[str, str, list[str]]] = field(default_factory=list)  # code, text, media


def _resolve(schema: dict, spec: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        target = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _describe(schema: dict, spec: dict) -> tuple[str, str]:
    """(type, rules) of a parameter's schema, nullable alternatives folded in."""
    schema = _resolve(schema, spec)
    options = [_resolve(s, spec) for s in schema.get("anyOf", [schema])]
    options = [o for o in options if o.get("type") != "null"] or [schema]
    main = {**schema, **options[0]}
    kind = main.get("type", "string")
    if main.get("format"):
        kind = f"{kind} ({main['format']})"
    rules = []
    if "enum" in main:
        rules.append("one of " + ", ".join(str(v) for v in main["enum"]))
    if "minimum" in main or "maximum" in main:
        rules.append(f"{main.get('minimum', '')}..{main.get('maximum', '')}")
    if "maxLength" in main:
        rules.append(f"at most {main['maxLength']} characters")
    return kind, "; ".join(rules)


def operations(spec: dict[str, Any]) -> list[Operation]:
    """Every operation of the OpenAPI document, its parameters and responses, in document order."""
    out = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            params = []
            for p in op.get("parameters", []):
                schema = p.get("schema", {})
                kind, rules = _describe(schema, spec)
                default = _resolve(schema, spec).get("default")
                params.append(
                    Parameter(
                        p["name"],
                        p["in"],
                        bool(p.get("required")),
                        kind,
                        rules,
                        "" if default is None else str(default),
                        p.get("description") or schema.get("description") or "",
                    )
                )
            responses = [
                (code, r.get("description", ""), sorted(r.get("content", {})))
                for code, r in op.get("responses", {}).items()
            ]
            out.append(
                Operation(
                    method.upper(),
                    path,
                    op.get("summary", ""),
                    op.get("description", ""),
                    params,
                    responses,
                )
            )
    return out
