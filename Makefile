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

# Ends with the kNN of the trained encoder against an untrained one, then what to try next on the run it made.
quickstart: install
	@run=runs/quickstart-$$(date +%Y%m%d-%H%M%S) && \
	$(VENV)/bin/sslvit fit --config configs/mae/quickstart.yaml --trainer.default_root_dir $$run && \
	echo && echo "Next, on the run you just made ($$run):" && \
	echo "  $(VENV)/bin/python tools/visualize_mae.py --checkpoint $$run/checkpoints/last.ckpt --output $$run/recon.png" && \
	echo "  $(VENV)/bin/python tools/knn_eval.py --checkpoint $$run/checkpoints/last.ckpt --random-init" && \
	echo "  $(VENV)/bin/python tools/plot_metrics.py $$run --output $$run/curves.png"

lint: install
	$(PY) -m ruff check ssl tools benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache
