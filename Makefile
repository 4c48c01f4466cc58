# `make test` and `make quickstart` are the whole set-up on a fresh machine: each creates the
# virtual environment if it is missing and installs the project into it first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install test quickstart lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Reinstall when the dependencies change.
$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(INSTALLED)

install: $(INSTALLED)

test: install
	$(PY) -m pytest

quickstart: install
	$(VENV)/bin/sslvit fit --config configs/mae/quickstart.yaml \
		--trainer.default_root_dir runs/quickstart-$$(date +%Y%m%d-%H%M%S)

lint: install
	$(PY) -m ruff check ssl tools benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache
