# The only entry point a newcomer needs: make run, make test, make bench, make lint.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: venv
	$(VENV)/bin/cove run

test: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: venv
	$(PY) -m benchmarks

lint: venv
	$(VENV)/bin/ruff check proto services deploy tests benchmarks
	$(VENV)/bin/mypy proto services/runtime

clean:
	rm -rf .cove
