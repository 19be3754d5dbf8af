"""The wire protocol's JSON Schema and the tables of ``docs/protocol.md``, generated from the models.

The pydantic models in :mod:`ppu.protocol` and :mod:`ppu.models` are the one source; this module
turns them into ``ppu/protocol.schema.json`` (shipped in the wheel: :func:`load_schema`), its copy
``docs/protocol.schema.json``, and the message and type tables between the ``generated`` markers of
``docs/protocol.md``, so that the document cannot drift from the code::

    python -m ppu.protocol_schema           # rewrite the schema files and the tables
    python -m ppu.protocol_schema --check   # exit 1, naming the stale files, when they differ

``tests/test_protocol_schema.py`` runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ppu import protocol as p
from ppu.models import MAX_IDS, AuditEntry, Result, Sample, Task
from ppu.transport.security import NEEDS, OWN_ONLY, Role

SCHEMA_NAME = "protocol.schema.json"
PACKAGED = Path(__file__).with_name(SCHEMA_NAME)
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
DOC_SCHEMA = ROOT / "docs" / SCHEMA_NAME
# not messages, but what a reply's `data` or an event's `event` holds
EXTRA_MODELS = (Task, Result, Sample, AuditEntry, p.TransitionEvent, p.ProgressEvent, p.GapEvent)
TO_WORKER = (p.RegisterOk, p.Assign, p.Abort, p.Pause, p.Resume, p.Ack)
LIMITS = {"max_message_bytes (default)": p.MAX_MESSAGE_BYTES, "MAX_REQ": p.MAX_REQ, "MAX_ACTOR": p.MAX_ACTOR,
          "MAX_NAME": p.MAX_NAME, "MAX_TEXT": p.MAX_TEXT, "MAX_IDS": MAX_IDS, "MAX_SUBMIT_TASKS": p.MAX_SUBMIT_TASKS,
          "MAX_WAIT_IDS": p.MAX_WAIT_IDS, "MAX_LIST_ROWS": p.MAX_LIST_ROWS}


def schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of every message, told apart by ``type``, plus the reply payload models."""
    messages = p.ADAPTER.json_schema(ref_template="#/$defs/{model}")
    _, extra = models_json_schema([(m, "validation") for m in EXTRA_MODELS], ref_template="#/$defs/{model}")
    defs = {**extra.get("$defs", {}), **messages["$defs"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ppu.invalid/protocol/PPU1.schema.json",
        "title": "PPU wire protocol PPU1",
        "description": "Frame 2 of every message: one JSON object told apart by 'type'. JSON numbers must be "
                       "finite (no NaN, Infinity, or overflowing numbers such as 1e400). See docs/protocol.md.",
        "x-protocol-version": p.PROTOCOL_VERSION.decode(),
        "x-limits": LIMITS,
        "oneOf": messages["oneOf"],
        "discriminator": messages["discriminator"],
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"


def load_schema() -> dict[str, Any]:
    """The schema shipped with this installed ppu (package data)."""
    return dict(json.loads(resources.files("ppu").joinpath(SCHEMA_NAME).read_text()))


# ---- markdown tables ----------------------------------------------------------------------------------


def _anchor(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return _anchor(prop["$ref"].rsplit("/", 1)[-1])
    if "const" in prop:
        return f'`"{prop["const"]}"`'
    if "enum" in prop:
        return " or ".join(f'`"{v}"`' for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(x) for x in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"[{_type(prop.get('items', {}))}]"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"{{string: {_type(extra)}}}" if isinstance(extra, dict) else "object"
    return str(kind)


def _limits(prop: dict[str, Any]) -> str:
    out = []
    for part in [prop, *prop.get("anyOf", [])]:
        if "minLength" in part:
            out.append(f"at least {part['minLength']} chars")
        if "maxLength" in part:
            out.append(f"at most {part['maxLength']} chars")
        if "pattern" in part:
            out.append(f"matches `{part['pattern']}`")
        for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                          ("exclusiveMaximum", "<")):
            if key in part:
                out.append(f"{word} {part[key]}")
        if "minItems" in part:
            out.append(f"at least {part['minItems']} items")
        if "maxItems" in part:
            out.append(f"at most {part['maxItems']} items")
        items = part.get("items")
        if isinstance(items, dict) and "maxLength" in items:
            out.append(f"each at most {items['maxLength']} chars")
    return ", ".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fields(model: dict[str, Any], skip: tuple[str, ...] = ("type",)) -> list[str]:
    props = model.get("properties", {})
    if not [n for n in props if n not in skip]:
        return ["No fields besides `type`." if "type" in props else "No fields."]
    required = set(model.get("required", []))
    rows = ["| field | type | required / default | limits | meaning |", "|---|---|---|---|---|"]
    for name, prop in props.items():
        if name in skip:
            continue
        need = ("**required**" if name in required else
                f"`{json.dumps(prop['default'])}`" if "default" in prop else "optional")
        rows.append(f"| `{name}` | {_cell(_type(prop))} | {need} | {_cell(_limits(prop))} | "
                    f"{_cell(prop.get('description', ''))} |")
    return rows


def _direction(model: type[BaseModel]) -> str:
    if model is p.Heartbeat:
        return "worker ↔ orchestrator"
    if model in p.WORKER_MESSAGES:
        return "worker → orchestrator"
    if model in TO_WORKER:
        return "orchestrator → worker"
    if model in p.CLIENT_REQUESTS:
        return "client → orchestrator"
    return "orchestrator → subscriber" if model is p.Event else "orchestrator → peer"


def _role(tag: str) -> str:
    need = NEEDS.get(tag, Role.client)
    own = " (a client: only its own tasks)" if tag in OWN_ONLY else ""
    return f"{need.value}{own}"


def _models() -> list[type[BaseModel]]:
    return [*p.WORKER_MESSAGES, *TO_WORKER, *p.CLIENT_REQUESTS, p.Reply, p.Error, p.Event]


def messages_markdown() -> str:
    defs = schema()["$defs"]
    out = ["| `type` | direction | least role | model |", "|---|---|---|---|"]
    models = _models()
    for m in models:
        tag = m.model_fields["type"].default
        role = _role(tag) if m in p.CLIENT_REQUESTS else ("worker" if m in p.WORKER_MESSAGES else "")
        out.append(f"| `{tag}` | {_direction(m)} | {role} | {_anchor(m.__name__)} |")
    for m in models:
        d = defs[m.__name__]
        out += ["", f"#### {m.__name__}", "",
                (f"`type: \"{m.model_fields['type'].default}\"`, {_direction(m)}. "
                 + _cell(d.get("description", ""))).strip(), ""]
        out += _fields(d)
    return "\n".join(out)


def types_markdown() -> str:
    defs = schema()["$defs"]
    message_names = {m.__name__ for m in _models()}
    out: list[str] = []
    for name, d in defs.items():
        if name in message_names:
            continue
        out += [f"#### {name}", ""]
        if d.get("description"):
            out += [_cell(d["description"]).strip(), ""]
        if "enum" in d:
            out.append("One of: " + ", ".join(f'`"{v}"`' for v in d["enum"]) + ".")
        else:
            out += _fields(d, skip=())
        out.append("")
    return "\n".join(out).rstrip()


MARKERS = {"messages": messages_markdown, "types": types_markdown}


def render_doc(text: str) -> str:
    """``text`` with every ``<!-- generated:NAME:start -->`` ... ``end`` region regenerated."""
    for name, make in MARKERS.items():
        start, end = f"<!-- generated:{name}:start -->", f"<!-- generated:{name}:end -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"docs/protocol.md has no {start} ... {end} region")
        region = f"{start}\n{make()}\n{end}"
        text = pattern.sub(lambda _m: region, text)  # noqa: B023 (used at once, inside this iteration)
    return text


def outputs() -> dict[Path, str]:
    """What each generated file should hold (the docs only in a source checkout)."""
    text = schema_text()
    out = {PACKAGED: text}
    if DOC.exists():
        out.update({DOC_SCHEMA: text, DOC: render_doc(DOC.read_text())})
    return out


def stale() -> list[Path]:
    """Files whose committed content differs from what the models generate."""
    return [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if "--check" in args:
        bad = stale()
        for path in bad:
            print(f"{path.relative_to(ROOT)} differs from the models: run python -m ppu.protocol_schema")
        return 1 if bad else 0
    for path, text in outputs().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
