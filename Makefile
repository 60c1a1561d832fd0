# Overcast: `make run` and `make test` work on a fresh Debian machine with Python 3.11 (as root,
# or with the Debian packages already there). Both set up only what is missing.
.PHONY: run test lint typecheck unit bench proto clean

PY := .venv/bin/python

run:
	@sh packaging/dev/bootstrap.sh run
	@sh packaging/dev/run.sh

test:
	@sh packaging/dev/bootstrap.sh test
	$(PY) proto/generate.py --check
	$(PY) -m ruff check controller agent tunnel tests bench proto/generate.py
	$(PY) -m mypy controller tunnel tests/support tests/tunnel
	$(PY) -m pytest

bench:
	@sh packaging/dev/bootstrap.sh bench
	$(PY) bench/run.py

proto:
	$(PY) proto/generate.py

clean:
	rm -rf .run build *.egg-info .pytest_cache .mypy_cache .ruff_cache
