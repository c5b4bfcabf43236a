"""The contract for outside consumers: ``python -m proto.schema`` writes docs/events.md and docs/schemas/*.json.

Each event gets a table of who produces it, on which subject, and who consumes it, all derived from the code:

* producer: the service whose package constructs the event (``services/<name>/``; ``services/runtime`` is every
  service), found by reading the sources' syntax trees;
* subject: ``cove.evt.<producer>.<aggregate>.<id>``, the aggregate read from the ``proto.subjects`` helper the
  producing module calls (``cluster_events`` -> ``cluster``, ``event_subject(_, "quota", _)`` -> ``quota``...);
* consumers: every ``add_projection`` / ``add_consumer`` registration in ``services/*/service.py``, its filter
  subjects evaluated in that module and matched (NATS wildcards) against the event's subject.

A new event, producer or consumer is picked up without editing this file. It also prints events.md (so the older
``python -m proto.schema > docs/events.md`` gives the same file). ``--check`` exits non-zero when the
files on disk differ from what the code generates (``tests/proto/test_schema_doc.py`` does the same).
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from proto import subjects
from proto.audit import AUDIT_TYPES
from proto.envelope import Envelope
from proto.events import EVENT_TYPES
from proto.requests import REQUEST_TYPES

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "services"
DOCS = ROOT / "docs"
SCHEMAS = DOCS / "schemas"

_AGGREGATE_HELPERS = {"cluster_events": "cluster", "cluster_template_events": "clustertemplate"}
_ID_PLACEHOLDER = {"cluster": "<cluster_uuid>", "clustertemplate": "<template_uuid>", "quota": "<project_id>"}
HEARTBEAT = "heartbeat"


@dataclass
class Route:
    """Where one event comes from and goes to."""

    producers: set[str] = field(default_factory=set)
    aggregates: set[str] = field(default_factory=set)

    def subjects_for(self) -> list[str]:
        out = []
        for producer in sorted(self.producers):
            who = "<service>" if producer == "runtime" else producer
            for aggregate in sorted(self.aggregates) or ["<aggregate>"]:
                if aggregate == HEARTBEAT:
                    out.append(f"{subjects.HEARTBEATS_PREFIX}.{who}")
                else:
                    out.append(f"{subjects.EVENTS_PREFIX}.{who}.{aggregate}.{_ID_PLACEHOLDER.get(aggregate, '<id>')}")
        return out


def _call_name(node: ast.Call) -> str | None:
    fn = node.func
    if isinstance(fn, ast.Name):
        return fn.id
    if isinstance(fn, ast.Attribute):
        return fn.attr
    return None


def _aggregates_called(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in _AGGREGATE_HELPERS:
            found.add(_AGGREGATE_HELPERS[name])
        elif name == "event_subject" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            found.add(str(node.args[1].value))
        elif name == "heartbeat_subject":
            found.add(HEARTBEAT)
    return found


def _service_files() -> dict[str, list[tuple[Path, ast.Module]]]:
    out: dict[str, list[tuple[Path, ast.Module]]] = {}
    for package in sorted(p for p in SERVICES.iterdir() if (p / "__init__.py").exists()):
        out[package.name] = [(f, ast.parse(f.read_text(), str(f))) for f in sorted(package.rglob("*.py"))]
    return out


def _scopes(tree: ast.Module) -> dict[ast.AST, ast.AST]:
    """Each node's innermost enclosing function (or the module)."""
    scope: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, current: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            scope[child] = current
            visit(child, child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else current)

    visit(tree, tree)
    return scope


@functools.cache
def routes() -> dict[str, Route]:
    """For every event type: its producers (service package names) and the aggregates of its subjects (those of
    the subject helpers called in the function that builds the event, else in its module, else in its package;
    ``_pick`` chooses among several)."""
    result = {name: Route() for name in EVENT_TYPES}
    for service, files in _service_files().items():
        package_aggregates: set[str] = set()
        made: list[tuple[str, set[str], set[str]]] = []
        for _, tree in files:
            module_aggregates = _aggregates_called(tree)
            package_aggregates |= module_aggregates
            scope = _scopes(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _call_name(node) in result:
                    made.append((_call_name(node) or "", _aggregates_called(scope[node]), module_aggregates))
        for name, function_aggregates, module_aggregates in made:
            route = result[name]
            route.producers.add(service)
            route.aggregates |= _pick(name, function_aggregates or module_aggregates or package_aggregates)
    return result


def _pick(event: str, candidates: set[str]) -> set[str]:
    """Of several aggregates a function publishes to, the one the event is named after (``ClusterQueuePositions``:
    ``queue`` over ``cluster``; ``ClusterTemplateCreated``: ``clustertemplate``), the longest such name winning."""
    if len(candidates) <= 1:
        return candidates
    named = sorted((a for a in candidates if a in event.lower()), key=lambda a: (-event.lower().rfind(a), -len(a)))
    return {named[0]} if named else candidates


class _Namespace(dict[str, Any]):
    """The module-level names of one source file, evaluated on demand from its syntax tree (constants assigned at the
    top level, names imported from other ``services`` modules, ``proto`` modules): filter subjects are read without
    importing the services, so a service that does not import at the moment does not break the contract's docs."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.assigned: dict[str, ast.expr] = {}
        self.imported: dict[str, tuple[str, str]] = {}
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.assigned[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                self.assigned[node.target.id] = node.value
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)

    def __missing__(self, name: str) -> Any:
        if name in self.assigned:
            value = self.evaluate(self.assigned[name])
        elif name in self.imported:
            module, attr = self.imported[name]
            if module.startswith("services."):
                value = _namespace(ROOT / (module.replace(".", "/") + ".py"))[attr]
            elif module.startswith("proto"):
                value = getattr(importlib.import_module(module), attr)
            else:
                raise KeyError(name)
        else:
            raise KeyError(name)
        self[name] = value
        return value

    def evaluate(self, expr: ast.expr) -> Any:
        return eval(compile(ast.Expression(expr), str(self.path), "eval"), {"__builtins__": {}}, self)


@functools.cache
def _namespace(path: Path) -> _Namespace:
    return _Namespace(path)


@functools.cache
def consumers() -> list[tuple[str, str, list[str]]]:
    """(service, registration, filter subjects) for each ``add_projection`` / ``add_consumer`` in
    services/*/service.py."""
    out: list[tuple[str, str, list[str]]] = []
    for service, files in _service_files().items():
        for path, tree in files:
            if path.name != "service.py":
                continue
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and _call_name(node) in ("add_projection", "add_consumer")):
                    continue
                arg = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "filter_subjects"), None)
                if arg is None:
                    continue
                out.append((service, _call_name(node) or "", sorted(_namespace(path).evaluate(arg))))
    return out


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def consumers_of(subject: str) -> list[str]:
    concrete = ".".join("x" if t.startswith("<") else t for t in subject.split("."))
    return sorted({svc for svc, _, filters in consumers() if any(subject_matches(f, concrete) for f in filters)})


# ------------------------------------------------------------------------------------------------ schemas


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one struct, self-contained (its own ``$defs``)."""
    schema = msgspec.json.schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cove.invalid/schemas/{cls.__name__}.json"
    return schema


def schema_files() -> dict[str, str]:
    """File name under docs/schemas/ -> contents: every event, the envelope and the audit record."""
    types: dict[str, type] = {**EVENT_TYPES, "Envelope": Envelope, **AUDIT_TYPES}
    return {f"{name}.json": json.dumps(json_schema(cls), indent=2, sort_keys=True) + "\n"
            for name, cls in sorted(types.items())}


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " \\| ".join(_type_of(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map of {_type_of(schema['additionalProperties'])}"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _fields(schema: dict[str, Any]) -> list[str]:
    props: dict[str, Any] = schema.get("properties", {})
    if not props:
        return []
    required = set(schema.get("required", []))
    out = ["| field | type | required |", "|---|---|---|"]
    for name, prop in props.items():
        out.append(f"| `{name}` | {_type_of(prop)} | {'yes' if name in required else ''} |")
    return out + [""]


def _doc(cls: type) -> list[str]:
    doc = " ".join((cls.__doc__ or "").split())
    return [doc, ""] if doc else []


def render() -> str:
    out: list[str] = [
        "# Cove events and requests",
        "",
        (
            "Generated by `python -m proto.schema` (this file and `docs/schemas/*.json`); do not edit by hand "
            "(`tests/proto/test_schema_doc.py` fails when either is stale). Producers, subjects and consumers are "
            "read from the code (`proto/schema.py` says how)."
        ),
        "",
        "## Subjects",
        "",
        (
            f"- Events: stream `{subjects.EVENTS_STREAM}`, subjects `cove.evt.<producer>.<aggregate>.<id>` "
            "(e.g. `cove.evt.api.cluster.<uuid>`, `cove.evt.api.clustertemplate.<uuid>`). Outside consumers "
            "subscribe to the subjects they care about (any NATS client; an ordered consumer with a filter "
            "subject), or read `GET /v1/events` on the API (server-sent events, docs/api-compatibility.md)."
        ),
        (
            f"- Audit: stream `{subjects.AUDIT_STREAM}`, subject `{subjects.AUDIT_API}`: one CADF `activity` "
            "record per API write ([CadfEvent](#cadfevent)); no Cove service consumes it."
        ),
        (
            f"- Dead letters: stream `{subjects.DLQ_STREAM}`, subject `cove.dlq.<consumer>`; headers "
            "`Cove-Dlq-Reason`, `Cove-Dlq-Stream-Seq`, `Cove-Dlq-Subject`, `Cove-Dlq-Deliveries` plus the originals."
        ),
        (
            f"- Heartbeats: stream `{subjects.HEARTBEATS_STREAM}`, subject `cove.heartbeat.<service>` "
            "(one message per subject)."
        ),
        (
            f"- Dropped messages: stream `{subjects.ADVISORIES_STREAM}` keeps the server's "
            f"`{subjects.MAX_DELIVERIES_PREFIX}.<stream>.<consumer>` advisories (7 days); each consumer reads its own "
            "through the durable queue group `<consumer>_dropped` and dead-letters the message."
        ),
        (
            f"- Stored decisions: `{subjects.EVENTS_STREAM}` re-announces each event on "
            f"`{subjects.decisions_source()}` once stored, headers only (JetStream RePublish), on "
            f"`{subjects.stored_decisions()}` with `Cove-Event-Type` and `Nats-Sequence`; core NATS, kept by no stream."
        ),
        "- RPC: `cove.rpc.<service>.<verb>`, queue group `<service>`.",
        "",
        "## Consumers",
        "",
        "| service | registration | filter subjects |",
        "|---|---|---|",
    ]
    for service, kind, filters in consumers():
        out.append(f"| {service} | `{kind}` | {', '.join(f'`{f}`' for f in filters)} |")
    env_schema = msgspec.json.schema(Envelope)
    out += [
        "",
        "## Envelope",
        "",
        ("Every event is published as a JSON `Envelope` ([schemas/Envelope.json](schemas/Envelope.json)); "
         "`payload.type` equals `type`, and `payload` is one of the events below."),
        "",
        *_fields(env_schema["$defs"]["Envelope"]),
        "## Events",
        "",
    ]
    all_routes = routes()
    for name in sorted(EVENT_TYPES):
        cls = EVENT_TYPES[name]
        route = all_routes[name]
        subs = route.subjects_for()
        producers = ", ".join(sorted("every service (runtime)" if p == "runtime" else p for p in route.producers))
        consumed = sorted({c for s in subs for c in consumers_of(s)})
        out += [f"### {name}", "", *_doc(cls)]
        out += [
            "| | |",
            "|---|---|",
            f"| producer | {producers or '(no service publishes it yet)'} |",
            f"| subject | {', '.join(f'`{s}`' for s in subs) or '–'} |",
            f"| consumers | {', '.join(consumed) or '(no Cove service)'} |",
            f"| schema | [schemas/{name}.json](schemas/{name}.json) |",
            "",
        ]
        out += _fields(msgspec.json.schema(cls)["$defs"][name])
    out += ["## Audit records", ""]
    for name, acls in sorted(AUDIT_TYPES.items()):
        out += [f"### {name}", "", *_doc(acls),
                f"Subject `{subjects.AUDIT_API}`; schema [schemas/{name}.json](schemas/{name}.json).", ""]
        out += _fields(msgspec.json.schema(acls)["$defs"][name])
    out += ["## Requests and replies", "", "NATS request-reply bodies (`cove.rpc.<service>.<verb>`).", ""]
    rnames = list(REQUEST_TYPES)
    _, rdefs = msgspec.json.schema_components([REQUEST_TYPES[n] for n in rnames], ref_template="#/$defs/{name}")
    for name in rnames:
        out += [f"### {name}", "", *_doc(REQUEST_TYPES[name]), *_fields(rdefs[name])]
    _, defs = msgspec.json.schema_components(
        [Envelope, *EVENT_TYPES.values(), *AUDIT_TYPES.values(), *REQUEST_TYPES.values()],
        ref_template="#/$defs/{name}")
    named = set(EVENT_TYPES) | set(REQUEST_TYPES) | set(AUDIT_TYPES) | {"Envelope"}
    out += ["## Shared definitions", ""]
    for name, schema in sorted(defs.items()):
        if name in named:
            continue
        out += [f"### {name}", ""]
        if "description" in schema:
            out += [" ".join(schema["description"].split()), ""]
        out += _fields(schema) or [f"{_type_of(schema)}", ""]
    return "\n".join(out)


def write(docs: Path = DOCS) -> None:
    (docs / "events.md").write_text(render())
    schemas = docs / "schemas"
    schemas.mkdir(exist_ok=True)
    files = schema_files()
    for stale in schemas.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (schemas / name).write_text(text)


def stale(docs: Path = DOCS) -> list[str]:
    """The generated files that differ from the code (missing, changed or left over)."""
    out = []
    if not (docs / "events.md").exists() or (docs / "events.md").read_text() != render():
        out.append("events.md")
    files = schema_files()
    on_disk = {p.name for p in (docs / "schemas").glob("*.json")} if (docs / "schemas").exists() else set()
    out += [f"schemas/{n}" for n in sorted(on_disk - set(files))]
    out += [f"schemas/{n}" for n, text in files.items()
            if not (docs / "schemas" / n).exists() or (docs / "schemas" / n).read_text() != text]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--stdout" in args:
        sys.stdout.write(render())
        return 0
    if "--check" in args:
        differ = stale()
        for name in differ:
            print(f"stale: docs/{name}", file=sys.stderr)
        return 1 if differ else 0
    write()
    sys.stdout.write(render())  # the old `python -m proto.schema > docs/events.md` still writes the same file
    return 0


if __name__ == "__main__":
    sys.exit(main())
