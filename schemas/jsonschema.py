"""JSON Schema documents for the public records, generated from the models.

``python -m schemas.jsonschema`` rewrites ``schemas/json/*.schema.json``; a test checks the
committed files match the models, so the published contract cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.records import SCHEMA_VERSION, Alert, DeadLetter, Event, Incident, Profile, ProfileEdit

__all__ = ["RECORDS", "SCHEMA_DIR", "generate", "render", "stale", "write_all"]

SCHEMA_DIR = Path(__file__).parent / "json"
RECORDS: dict[str, type[msgspec.Struct]] = {
    "event": Event,
    "alert": Alert,
    "incident": Incident,
    "profile": Profile,
    "dead_letter": DeadLetter,
    "profile_edit": ProfileEdit,
}


def generate(name: str) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one record."""
    schema: dict[str, Any] = msgspec.json.schema(RECORDS[name])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cadr.dev/schemas/v{SCHEMA_VERSION}/{name}.schema.json"
    schema["title"] = f"cadr {name} record, schema version {SCHEMA_VERSION}"
    return schema


def render(name: str) -> bytes:
    """The schema file's exact bytes (sorted keys, indented, trailing newline)."""
    return orjson.dumps(generate(name), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RECORDS:
        path = directory / f"{name}.schema.json"
        path.write_bytes(render(name))
        written.append(path)
    return written


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names whose committed schema file differs from what the models generate."""
    out = []
    for name in RECORDS:
        path = directory / f"{name}.schema.json"
        if not path.exists() or path.read_bytes() != render(name):
            out.append(name)
    return out


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        bad = stale()
        if bad:
            sys.stderr.write(f"stale JSON schemas: {', '.join(bad)}; run python -m schemas.jsonschema\n")
            sys.exit(1)
        sys.exit(0)
    for p in write_all():
        sys.stdout.write(f"wrote {p}\n")
