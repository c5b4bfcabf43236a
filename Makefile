# The only entry point a newcomer needs: make run, make test, make bench, make lint.
# Works from a fresh clone: the first target creates .venv and installs Cove with its test extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# openstacksdk 4.14 beside the venv's newest one: what Ansible's openstack.cloud 2.5 runs with; the tests that
# prove Cove's leniency for it put this folder first on PYTHONPATH (tests/e2e/test_sdk_versions.py).
SDK_4_14 := $(VENV)/openstacksdk-4.14
# extra pytest arguments, e.g. make test PYTEST_ARGS="tests/infra -x"
PYTEST_ARGS ?=

.PHONY: run test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Cove needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps --upgrade --target $(SDK_4_14) 'openstacksdk==4.14.0'
	touch $(STAMP)

# NATS, PostgreSQL (embedded unless COVE_DATABASE_URL), the devcloud and every service; Ctrl-C stops all.
run: venv
	$(VENV)/bin/cove run

test: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks

lint: venv
	$(VENV)/bin/ruff check proto services deploy tests benchmarks
	$(VENV)/bin/mypy proto services/runtime deploy/local deploy/devcloud

clean:
	rm -rf .cove
