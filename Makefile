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

# The run folder is claimed with an exclusive mkdir (sslvit.cli.run_dir.claim_run_dir): two quickstarts
# started in the same second get their own folders instead of training into one.
CLAIM_RUN_DIR := $(PY) -c "from sslvit.cli.run_dir import claim_run_dir; print(claim_run_dir('runs/quickstart'))"

# Ends with the kNN of the trained encoder against an untrained one, then what to try next on the run it made.
quickstart: install
	@run=$$($(CLAIM_RUN_DIR)) && \
	$(VENV)/bin/sslvit fit --config configs/mae/quickstart.yaml --trainer.default_root_dir $$run && \
	echo && echo "Next, on the run you just made ($$run):" && \
	echo "  $(VENV)/bin/python tools/visualize_mae.py --checkpoint $$run/checkpoints/last.ckpt --output $$run/recon.png" && \
	echo "  $(VENV)/bin/python tools/knn_eval.py --checkpoint $$run/checkpoints/last.ckpt --random-init" && \
	echo "  $(VENV)/bin/python tools/plot_metrics.py $$run --output $$run/curves.png"

lint: install
	$(PY) -m ruff check ssl tools benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache
