# `make demo` and `make test` work on a fresh machine: they create .venv and install into it.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build;
# override with e.g. `make TORCH=torch==2.5.1 test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean results

RESULTS_STORE ?= results/safetyworld.db
BENCH = $(BIN)/immunity bench --store $(RESULTS_STORE) --seeds 0,1,2 --quiet
REPORT = $(BIN)/immunity report --store $(RESULTS_STORE) --split eval
REPRESENTATION = scratch,sft,vaccine,t-vaccine,booster,repnoise,circuit-breakers,antidote
WEIGHT_SPACE = scratch,sft,mlac,ntl,sophon,tar,condition-number,lox
# TAR's own adversary (full fine-tuning on harmful data, lr in its set, K = 16 steps) and changes to it.
TAR_TRAINED = mode=full p=1 n=256 lr=1e-4 max_steps=16
TAR_ATTACKS = "$(TAR_TRAINED)" "mode=full p=1 n=256 lr=1e-3 max_steps=16" \
	"mode=full p=1 n=256 lr=1e-4 max_steps=64" \
	"mode=full p=1 n=256 lr=3e-4 max_steps=16 schedule=cosine warmup_ratio=0.25"

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
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# docs/results.md: every defense on SafetyWorld (default attack, 3 seeds, hyperparameters chosen
# on the validation split, docs/reproduction.md), TAR under changed attacks, and step costs.
results: install
	$(BENCH) --defenses sft,vaccine,t-vaccine,repnoise,circuit-breakers
	$(BENCH) --defenses vaccine defense.rho=5
	$(BENCH) --defenses booster defense.alpha=0.01
	$(BENCH) --defenses antidote defense.ratio=0.01
	$(BENCH) --defenses scratch,sophon,tar
	$(BENCH) --defenses mlac defense.harmful_weight=0.3
	$(BENCH) --defenses ntl defense.alpha=1
	$(BENCH) --defenses condition-number defense.lambda_ill=300
	$(BENCH) --defenses lox --grid defense.alpha=0.5,1.25
	for a in $(TAR_ATTACKS); do \
	  $(BENCH) --defenses scratch,sft,tar,sophon $$(printf 'attack.%s ' $$a); \
	  $(BENCH) --defenses mlac defense.harmful_weight=0.3 $$(printf 'attack.%s ' $$a); done
	{ echo "# Results on SafetyWorld"; echo; \
	  echo "Regenerate: \`make results\` (runs what the store lacks, then rewrites this file)."; \
	  echo "Evaluation split, exact judge, mean ± std over seeds 0, 1, 2. \"regret vs scratch\": harmful"; \
	  echo "capability after the attack minus what the same attack reaches from a random init (\`scratch\`),"; \
	  echo "per seed; ≤ 0 is MLAC's criterion of success."; echo; \
	  echo "## Representation-space defenses, default attack"; echo; \
	  $(REPORT) --defense $(REPRESENTATION) --attack; echo; \
	  echo "## Weight-space and meta-learning defenses, default attack"; echo; \
	  $(REPORT) --defense $(WEIGHT_SPACE) --attack; echo; \
	  echo "## Full-parameter attacks on harmful data only: TAR's own adversary and changed ones"; echo; \
	  for a in $(TAR_ATTACKS); do $(REPORT) --defense scratch,sft,tar,sophon,mlac --attack $$a; echo; done; \
	  echo "## Condition number of the head's input features (validation data, seeds 0, 1, 2)"; echo; \
	  $(BIN)/python benchmarks/feature_kappa.py defense.lambda_ill=300; echo; \
	  echo "## Step cost relative to sft"; echo; $(BIN)/python benchmarks/step_cost.py; } > docs/results.md

clean:
	rm -rf $(VENV) runs results
