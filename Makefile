# The only entry point a newcomer needs: make run, make test, make bench, make lint.
# Works from a fresh clone: the first target creates .venv and installs Cove with its test extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# openstacksdk 4.14 beside the venv's newest one: what Ansible's openstack.cloud 2.5 runs with; the tests that
# prove Cove's leniency for it put this folder first on PYTHONPATH (tests/e2e/test_client_paging_and_updates.py).
SDK_4_14 := $(VENV)/openstacksdk-4.14
# extra pytest arguments, e.g. make test PYTEST_ARGS="tests/infra -x"
PYTEST_ARGS ?=
# test modules run in this many processes at once (pytest-xdist, a module's tests together): most end-to-end tests
# wait on the devcloud's timing model rather than on the CPU, so 3 workers fit 2 cores. TEST_WORKERS=0 runs in one.
TEST_WORKERS ?= 3

.PHONY: run run-cluster test bench chaos lint venv clean console

venv: $(STAMP)

$(STAMP): pyproject.toml clients/osc-cove/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Cove needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps -e clients/osc-cove  # `openstack coe usage list` (Cove's OSC plugin)
	$(PY) -m pip install -q --no-deps --upgrade --target $(SDK_4_14) 'openstacksdk==4.14.0'
	touch $(STAMP)

# cloud-init (for its `cloud-init schema`) and shellcheck, from Debian's packages, unpacked into the venv without
# root and without touching the system (the venv's Python runs cloud-init with PYTHONPATH on the unpacked modules):
# tests/provisioner/test_drivers.py checks every rendered user data with them. apt-get download uses the system's
# package lists, else fetches its own into the venv.
TOOLS       := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
TOOLS_DEBS  := cloud-init python3-configobj python3-six shellcheck
venv: $(TOOLS_STAMP)

$(TOOLS_STAMP): | $(STAMP)
	rm -rf $(TOOLS) && mkdir -p $(TOOLS)/debs $(TOOLS)/apt/lists/partial $(TOOLS)/apt/cache
	cd $(TOOLS)/debs && { apt-get -q download $(TOOLS_DEBS) || { \
	  apt="apt-get -q -o Dir::State::Lists=$$PWD/../apt/lists -o Dir::Cache=$$PWD/../apt/cache -o Debug::NoLocking=1"; \
	  $$apt update && $$apt download $(TOOLS_DEBS); }; }
	for deb in $(TOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(TOOLS) || exit 1; done
	PYTHONPATH=$(TOOLS)/usr/lib/python3/dist-packages $(PY) $(TOOLS)/usr/bin/cloud-init schema --help >/dev/null
	$(TOOLS)/usr/bin/shellcheck --version >/dev/null
	rm -rf $(TOOLS)/debs $(TOOLS)/apt
	touch $@

# dockerd (Debian's docker.io, with the containerd and runc it starts) for tests/devcloud/test_docker_engine.py: a
# real Docker engine with Cove's certificates (issue 12). About 65 MB fetched; only dockerd, containerd and runc are
# kept (about 130 MB). Starting dockerd needs root: elsewhere that test skips with the daemon's own error.
DOCKER_TOOLS := $(TOOLS)/docker
DOCKER_STAMP := $(DOCKER_TOOLS)/.installed-stamp
DOCKER_DEBS  := docker.io containerd runc
venv: $(DOCKER_STAMP)

$(DOCKER_STAMP): | $(TOOLS_STAMP)
	rm -rf $(DOCKER_TOOLS) && mkdir -p $(DOCKER_TOOLS)/debs $(DOCKER_TOOLS)/apt/lists/partial $(DOCKER_TOOLS)/apt/cache
	cd $(DOCKER_TOOLS)/debs && { apt-get -q download $(DOCKER_DEBS) || { \
	  apt="apt-get -q -o Dir::State::Lists=$$PWD/../apt/lists -o Dir::Cache=$$PWD/../apt/cache -o Debug::NoLocking=1"; \
	  $$apt update && $$apt download $(DOCKER_DEBS); }; }
	for deb in $(DOCKER_TOOLS)/debs/*.deb; do dpkg-deb -x "$$deb" $(DOCKER_TOOLS)/root || exit 1; done
	mkdir -p $(DOCKER_TOOLS)/bin && mv $(DOCKER_TOOLS)/root/usr/sbin/dockerd $(DOCKER_TOOLS)/root/usr/bin/containerd \
	  $(DOCKER_TOOLS)/root/usr/sbin/runc $(DOCKER_TOOLS)/bin/
	rm -rf $(DOCKER_TOOLS)/root $(DOCKER_TOOLS)/debs $(DOCKER_TOOLS)/apt
	$(DOCKER_TOOLS)/bin/dockerd --version >/dev/null
	touch $@

# The web console (issue 18, docs/console.md). console/dist is committed, so `make run` serves it without Node;
# `make console` rebuilds it after a change to console/src (tests/console/test_build.py fails while it is stale).
# make venv installs the console's npm packages (Vite, TypeScript, and playwright-core for tests/console) with
# `npm ci` where npm exists, and Debian's chromium for the browser tests where it can (apt-get, as root: about
# 110 packages, 1 min here); where either cannot be, tests/console skips and says why.
CONSOLE_STAMP  := console/node_modules/.installed-stamp
CHROMIUM_STAMP := $(VENV)/.chromium-stamp
venv: $(CONSOLE_STAMP) $(CHROMIUM_STAMP)

$(CONSOLE_STAMP): console/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd console && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed-stamp; \
	else echo "npm not found: tests/console will skip (make run serves the committed console/dist)"; fi

$(CHROMIUM_STAMP): | $(STAMP)
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
	  || echo "Debian's chromium could not be installed: tests/console will skip"; \
	fi
	@if [ -x /usr/bin/chromium ]; then touch $@; else echo "no /usr/bin/chromium (install Debian's chromium as root): tests/console will skip"; fi

console:
	cd console && npm ci --no-audit --no-fund --loglevel=error && npm run build

# NATS, PostgreSQL (embedded unless COVE_DATABASE_URL), the devcloud and every service; Ctrl-C stops all.
run: venv
	$(VENV)/bin/cove run

# The same on a 3-node JetStream cluster (R3 streams, fsync before ack) with 2 copies of every service, the API's
# sharing its port (SO_REUSEPORT); same .cove/clouds.yaml and API address, its own streams and database.
run-cluster: venv
	$(VENV)/bin/cove run --copies 2 --nats-nodes 3

test: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks

# The provisioner SIGKILLed at random points during 50 concurrent creates and the deletes: nothing duplicated nor
# orphaned (tests/chaos; the short form runs in make test). COVE_CHAOS_SEED=<the printed seed> repeats a run.
# Then, on make run-cluster's stack, one fault at a time during 200 concurrent creates and deletes (kill -9 of each
# service, one copy and all copies, of a NATS node, a PostgreSQL restart, the devcloud failing 10% of calls and
# hanging some), with a table of the faults and of what was checked (tests/chaos/test_faults.py).
chaos: venv
	COVE_CHAOS=full $(VENV)/bin/pytest -q -p no:cacheprovider -s tests/chaos/test_provisioner_kill.py $(PYTEST_ARGS)
	COVE_CHAOS=full $(VENV)/bin/pytest -q -p no:cacheprovider -s tests/chaos/test_faults.py $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check proto services deploy tests benchmarks
	$(VENV)/bin/mypy proto services deploy

clean:
	rm -rf .cove
