# The two entry points of the README. Each runs the set-up first (idempotent).
.PHONY: demo test setup lint typecheck bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/cadr demo

test: setup
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

typecheck: setup
	.venv/bin/mypy

bench: setup
	@for b in bench/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
