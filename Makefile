# `make demo` and `make test` work on a fresh machine: they create .venv and install into it.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build;
# override with e.g. `make TORCH=torch==2.5.1 test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean results

RESULTS_STORE ?= results/representation.db
BENCH = $(BIN)/immunity bench --store $(RESULTS_STORE) --seeds 0,1,2 --quiet
REPRESENTATION = sft,vaccine,t-vaccine,booster,repnoise,circuit-breakers,antidote

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/immunity demo

test: install
	$(BIN)/python -m pytest -q

# docs/results.md: the representation-space defenses on SafetyWorld (default attack, 3 seeds,
# hyperparameters chosen on the validation split, docs/reproduction.md) and their step costs.
results: install
	$(BENCH) --defenses sft,vaccine,t-vaccine,repnoise,circuit-breakers
	$(BENCH) --defenses vaccine defense.rho=5
	$(BENCH) --defenses booster defense.alpha=0.01
	$(BENCH) --defenses antidote defense.ratio=0.01
	{ echo "# Results on SafetyWorld"; echo; \
	  echo "Regenerate: \`make results\` (runs what the store lacks, then rewrites this file)."; echo; \
	  $(BIN)/immunity report --store $(RESULTS_STORE) --defense $(REPRESENTATION) --split eval; echo; \
	  echo "## Step cost relative to sft"; echo; $(BIN)/python benchmarks/step_cost.py; } > docs/results.md

clean:
	rm -rf $(VENV) runs results
