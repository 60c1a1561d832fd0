# Overcast: `make run` and `make test` work on a fresh Debian machine with Python 3.11 (as root,
# or with the Debian packages already there). Both set up only what is missing.
.PHONY: run test lint typecheck unit bench proto clean

PY := .venv/bin/python
# test processes (pytest-xdist): tests that change the machine (network namespaces, sshd,
# routes) run one after another in one of them; `make test TEST_WORKERS=1` runs them all in one
TEST_WORKERS ?= 2

run:
	@sh packaging/dev/bootstrap.sh run
	@sh packaging/dev/run.sh

test:
	@sh packaging/dev/bootstrap.sh test
	$(PY) proto/generate.py --check
	$(PY) -m ruff check controller agent tunnel tests bench proto/generate.py
	$(PY) -m mypy controller tunnel tests/support tests/tunnel
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

bench:
	@sh packaging/dev/bootstrap.sh bench
	$(PY) bench/run.py

proto:
	$(PY) proto/generate.py

clean:
	rm -rf .run build *.egg-info .pytest_cache .mypy_cache .ruff_cache
