#!/usr/bin/env bash
# Run the whole suite: lint, format and type checks, then pytest (unit + integration against a real Kafka broker
# started by the tests, chdb, and real eBPF programs when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m schemas.jsonschema --check
exec .venv/bin/pytest -q -ra --durations=30 --timeout=900 -p no:cacheprovider "$@"
