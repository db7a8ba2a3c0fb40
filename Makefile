.PHONY: setup lint test fast demo bench clean
PY := .venv/bin

setup:
	bash scripts/setup

lint:
	$(PY)/ruff check wnodes_cli tests bench
	$(PY)/ruff format --check wnodes_cli tests bench
	$(PY)/mypy

test:
	bash scripts/test

# Everything but the slow real-daemon and large-copy tests.
fast:
	$(PY)/python -m pytest -m "not slow and not libvirt"

demo:
	bash scripts/demo

bench:
	$(PY)/python bench/run.py

clean:
	rm -rf .venv .cache .pytest_cache .mypy_cache .ruff_cache
