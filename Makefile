# `make demo` and `make test` work on a fresh machine: they create .venv and install into it.
# torch is pinned first so that pip takes the CPU wheel instead of a multi-GB CUDA build;
# override with e.g. `make TORCH=torch==2.5.1 test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test typecheck test-integration test-phenomena docs docs-check release release-real base install clean results reselect reselect-report threads \
	attacks attacks-report durability attack-layers real real-report real-budgets real-applied real-gemma \
	real-benchmarks

RESULTS_STORE ?= results/safetyworld.db
WORKERS ?= 1
# The default attack on 10 seeds (one shipped base, so seeds vary alignment and the attack); the
# six defenses that cost minutes per seed on 6.
RESULT_SEEDS ?= 0,1,2,3,4,5,6,7,8,9
EXPENSIVE_SEEDS ?= 0,1,2,3,4,5
CHEAP = none,scratch,sft,deep-alignment,constrained-sft,repnoise,circuit-breakers,antidote,ntl,tar,condition-number,lox,lapt,ilu,antidote-hypernet
EXPENSIVE = vaccine,t-vaccine,booster,mlac,sophon,et
BENCH = $(BIN)/immunity bench --store $(RESULTS_STORE) --quiet --workers $(WORKERS)
# The side studies (TAR's adversary, MLAC's regret) and the threat-model rows on three seeds.
SIDE_SEEDS ?= 0,1,2
SIDE_BENCH = $(BIN)/immunity bench --store $(RESULTS_STORE) --seeds $(SIDE_SEEDS) --quiet --workers $(WORKERS)
REPORT = $(BIN)/immunity report --store $(RESULTS_STORE) --split eval
# The attacker's budgets behind the HS-steps AUC (with the default's 72), on every result seed of sft.
AUC_STEPS = 24,48,96,160
# The matched baselines: sft with Vaccine's and T-Vaccine's reference adapter and budget, and with
# Booster's.
BOOSTER_MATCHED = defense.lora_r=32 defense.lora_alpha=4 defense.lora_targets=qkv defense.lr=4e-3 defense.epochs=8
MATCHED = "sft defense.lora_r=8 defense.lora_alpha=4 defense.lora_dropout=0.1 defense.epochs=8" "sft $(BOOSTER_MATCHED)"
# The papers' own threat models: the attacker keeps training the released adapter (Booster's
# `single_lora`), at our attack's budget and at the reference fine-tuning settings (lr 1e-5,
# 20 epochs of batch 10 on n = 500).
REFERENCE_FT = attack.lr=1e-5 attack.epochs=20 attack.batch_size=10
THREAT_DEFENSES = booster,vaccine,t-vaccine
# Defenses composed in stage order (alignment, post-alignment, repair after the attack).
COMPOSED = "booster+lox+antidote defense.lox.alpha=0.5" "vaccine+antidote" "circuit-breakers+antidote" \
	"repnoise+circuit-breakers"
COMPOSED_NAMES = booster+lox+antidote,vaccine+antidote,circuit-breakers+antidote,repnoise+circuit-breakers
# TAR's own adversary (full fine-tuning on harmful data, lr in its set, K = 16 steps) and changes to it,
# on the defenses whose papers attack with full fine-tuning.
FULL_FT_DEFENSES = scratch,sft,tar,sophon,mlac,repnoise,condition-number,ntl
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
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Types of the package (mypy; also part of `make test`). Only the syntax a run executes counts
# towards a result's code version: an annotation, a cast or a TYPE_CHECKING import stales nothing.
typecheck: install
	$(BIN)/mypy

# The README's headline phenomena on the shipped base (slow-marked; CI runs it after the other tiers).
test-phenomena: install
	$(BIN)/python -m pytest -q -m slow tests/test_phenomena.py

# Every published number from the released results (offline, seconds); --check fails on a difference.
docs: install
	$(BIN)/python -m immunity.reports.docs

docs-check: install
	$(BIN)/python -m immunity.reports.docs --check

# Export the SafetyWorld store and its runs' generations into results/release/ (then `make docs`).
release: install
	$(BIN)/python -c "from immunity.reports.release import export; \
	  export('$(RESULTS_STORE)', 'safetyworld', command='make results && make release')"

# Export the real track's stores (answers to harmful requests cut to their first words: docs/evidence.md).
release-real: install
	$(BIN)/python -c "from immunity.reports.release import export; \
	  export('$(REAL_VAL_STORE)', 'real_val', command='make real-budgets && make release-real', real=True)"
	if [ -f $(REAL_STORE) ]; then $(BIN)/python -c "from immunity.reports.release import export; \
	  export('$(REAL_STORE)', 'real', command='make real && make release-real', real=True)"; fi
# Several processes, subprocesses and the architecture matrix (CI runs it after `make test`).
test-integration: install
	$(BIN)/python -m pytest -q -m integration

# The SafetyWorld store: every defense under the default attack on 10 seeds (the six expensive ones
# on 6); the demo's benign fine-tuning and its bfloat16 rows; deep alignment under the prefill; E.T.
# under the steering attack; the matched baselines; each method under its paper's own threat model;
# AntiDote's adversary ablation; composed defenses; TAR's adversary. Then `make release docs`
# publishes it (docs/results.md).
results: install
	$(BENCH) --seeds $(RESULT_SEEDS) --defenses $(CHEAP)
	$(SIDE_BENCH) --defenses sft attack.p=0
	$(SIDE_BENCH) --defenses none,sft precision=bfloat16
	$(SIDE_BENCH) --defenses sft attack.p=0 precision=bfloat16
	$(SIDE_BENCH) --defenses none,sft,deep-alignment attack=prefill
	$(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses sft,et,lapt,circuit-breakers attack=steering
	$(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses $(EXPENSIVE)
	$(BENCH) --seeds $(RESULT_SEEDS) --defenses sft --grid attack.max_steps=$(AUC_STEPS)
	for c in $(MATCHED); do set -- $$c; d=$$1; shift; $(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses $$d "$$@"; done
	$(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses antidote-hypernet defense.adversary=false
	$(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses sft,$(THREAT_DEFENSES) attack.continue_adapter=true
	$(SIDE_BENCH) --defenses sft,$(THREAT_DEFENSES) attack.continue_adapter=true $(REFERENCE_FT)
	$(SIDE_BENCH) --defenses sft,$(THREAT_DEFENSES) $(REFERENCE_FT)
	for c in $(MATCHED); do set -- $$c; d=$$1; shift; \
	  $(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses $$d "$$@" attack.continue_adapter=true; \
	  $(SIDE_BENCH) --defenses $$d "$$@" attack.continue_adapter=true $(REFERENCE_FT); done
	for c in $(COMPOSED); do set -- $$c; d=$$1; shift; $(SIDE_BENCH) --defenses $$d "$$@"; done
	$(BENCH) --seeds $(EXPENSIVE_SEEDS) --defenses $(FULL_FT_DEFENSES) $$(printf 'attack.%s ' $(TAR_TRAINED))
	for a in $(TAR_ATTACKS); do $(SIDE_BENCH) --defenses $(FULL_FT_DEFENSES) $$(printf 'attack.%s ' $$a); done
	$(MAKE) release docs

# Which defense holds against which threat: every defense x every attack family (evaluation
# split), written to docs/attacks.md. Antidote repairs a fine-tuned adapter, so it meets only the
# fine-tuning attacks.
ATTACKS = harmful-finetune,benign-finetune,steering,refusal-ablation,reft,embedding,backdoor
FINETUNE_ATTACKS = harmful-finetune,benign-finetune,backdoor
CROSS_DEFENSES = none,scratch,sft,vaccine,t-vaccine,booster,repnoise,circuit-breakers,lox,mlac,ntl,sophon,tar
CROSS_DEFENSES := $(CROSS_DEFENSES),condition-number,et,lapt,ilu,antidote-hypernet
ATTACK_SEEDS ?= 0,1,2
# The budget and sample sweeps (the resistance curves) run on fewer seeds: 20 defenses x 7 points.
SWEEP_SEEDS ?= 0
# The attacker's budget: steps below and above the default's 72, and samples n around its 500.
BUDGETS = 12,24,48,160
SAMPLES = 125,250,1000
# The adaptive attacker (Optuna TPE over harmful-finetune's hyperparameters, validation split)
# against the defenses that hold the fixed grid; its best setting's evaluation run joins the store.
SEARCH_DEFENSES = circuit-breakers repnoise mlac sophon
SEARCH_TRIALS = 12
attacks: install
	$(BIN)/immunity bench --store results/attacks.db --seeds $(ATTACK_SEEDS) --quiet --workers $(WORKERS) \
	  --defenses $(CROSS_DEFENSES) --grid attack=$(ATTACKS)
	$(BIN)/immunity bench --store results/attacks.db --seeds $(ATTACK_SEEDS) --quiet --workers $(WORKERS) \
	  --defenses antidote --grid attack=$(FINETUNE_ATTACKS)
	$(BIN)/immunity bench --store results/attacks.db --seeds $(SWEEP_SEEDS) --quiet --workers $(WORKERS) \
	  --defenses $(CROSS_DEFENSES),antidote --grid attack.max_steps=$(BUDGETS)
	$(BIN)/immunity bench --store results/attacks.db --seeds $(SWEEP_SEEDS) --quiet --workers $(WORKERS) \
	  --defenses $(CROSS_DEFENSES),antidote --grid attack.n=$(SAMPLES)
	for d in $(SEARCH_DEFENSES); do $(BIN)/immunity attack-search --defense $$d --trials $(SEARCH_TRIALS) --quiet \
	  --store results/attacks.db --storage results/attack_search.db; done
	$(MAKE) attacks-report

# E.T. and LAPT against steering and ReFT at each layer whose output feeds a block (the E.T. record
# in docs/reproduction.md); its own store, so that the leaderboard's attack counts stay comparable.
attack-layers: install
	$(BIN)/immunity bench --store results/attack_layers.db --seeds $(ATTACK_SEEDS) --quiet --workers $(WORKERS) \
	  --defenses sft,et,lapt --grid attack=steering,reft --grid attack.layer=0,1,2
	$(BIN)/immunity report --store results/attack_layers.db --split eval --paired

# The attack store's leaderboard and tables (its page, docs/history/attacks.md, is withdrawn until the
# evidence generator covers this store: `make release docs` publishes only what it generates).
attacks-report: install
	$(BIN)/immunity report --store results/attacks.db --split eval --aggregate bounded-worst-case
	$(BIN)/immunity report --store results/attacks.db --split eval --paired --default-attacks

# Qi et al.'s durability grid (issue 11): learning rate x schedule (constant; cosine with warm-up)
# x LoRA / full x AdamW / SGD x harmful fraction p (0: benign only), into the attack store, where
# `report --aggregate bounded-worst-case` ranks defenses by the worst capable attack. Harmful data
# alone (p = 1) has 432 attack-split samples: n = 256 (TAR's adversary's), at the default's 72 steps.
DURABILITY_DEFENSES ?= sft,circuit-breakers,sophon,mlac,repnoise
DURABILITY_SEEDS ?= 0
DURABILITY = $(BIN)/immunity bench --store results/attacks.db --seeds $(DURABILITY_SEEDS) --quiet \
	--workers $(WORKERS) --defenses $(DURABILITY_DEFENSES) --grid attack.lr=1e-4,3e-4,1e-3 \
	--grid attack.mode=lora,full --grid attack.optimizer=adamw,sgd
durability: install
	for s in "attack.schedule=constant" "attack.schedule=cosine attack.warmup_ratio=0.1"; do \
	  $(DURABILITY) --grid attack.p=0,0.05,0.1 $$s; \
	  $(DURABILITY) attack.p=1 attack.n=256 attack.max_steps=72 $$s; done
	$(BIN)/immunity report --store results/attacks.db --split eval --aggregate bounded-worst-case

# Re-selection at the default attack (72 steps): each method's sweep on the validation split, the
# choice by HS after the default attack (and its harmful NLL) with helpfulness before >= 90 %;
# Booster's alpha at lambda 5: lambda*alpha 0.05 / 0.2 / 0.5 (the reference's 0.5), under a fresh
# adapter and under its paper's threat model (the attacker continues its adapter), where the
# matched `sft` is not saturated. `make reselect-report` prints the per-seed table
# docs/reproduction.md quotes.
RESELECT_STORE = results/reselect.db
RESELECT = $(BIN)/immunity bench --store $(RESELECT_STORE) --quiet --workers $(WORKERS) eval.split=val
reselect: install
	$(RESELECT) --seeds 0,1,2 --defenses sft,ntl,tar,circuit-breakers,antidote
	$(RESELECT) --seeds 0,1,2 --defenses ntl --grid defense.alpha=0.03,0.3
	$(RESELECT) --seeds 0,1,2 --defenses tar --grid defense.lr=2e-5,1e-4
	$(RESELECT) --seeds 0,1,2 --defenses antidote --grid defense.ratio=0.01,0.1
	$(RESELECT) --seeds 0,1,2 --defenses circuit-breakers --grid defense.lr=3e-3,1e-2 --grid defense.steps=150,300
	$(RESELECT) --seeds 0,1 --defenses booster --grid defense.alpha=0.01,0.04,0.1
	$(RESELECT) --seeds 0,1 --defenses booster --grid defense.alpha=0.01,0.04,0.1 attack.continue_adapter=true
	$(RESELECT) --seeds 0,1 --defenses sft $(BOOSTER_MATCHED) attack.continue_adapter=true
	$(RESELECT) --seeds 0,1 --defenses vaccine --grid defense.rho=2,5
	$(RESELECT) --seeds 0,1 --defenses t-vaccine --grid defense.rho=3,5
	for c in $(MATCHED); do set -- $$c; d=$$1; shift; $(RESELECT) --seeds 0,1 --defenses $$d "$$@"; done
	$(MAKE) reselect-report

reselect-report: install
	$(BIN)/immunity report --store $(RESELECT_STORE) --split val --per-seed
	$(BIN)/immunity report --store $(RESELECT_STORE) --split val --per-seed --attack continue_adapter=true

# Does a SafetyWorld figure depend on the machine's thread count? (README, "Numbers that hold")
threads: install
	$(BIN)/python benchmarks/threads.py --seeds 0,1,2

# Rebuild the shipped SafetyWorld base (src/immunity/assets/safetyworld-base, with its card).
base: install
	$(BIN)/python -c "from immunity.safetyworld import SafetyWorld, write_shipped_base; \
	  print(write_shipped_base(SafetyWorld()))"

# The real track, as a fair trial: SmolLM2-135M-Instruct (from the package registry) on AdvBench's
# prompts, with HarmBench's 200 standard behaviours as a held-out benchmark on the evaluation split
# (never used for any choice); every defense at the track's CPU budgets (src/immunity/tracks.py) on
# 3 seeds under the default attack, the fine-tuning-as-a-service defenses beside them, the
# inference-time attacks on seed 0 and the prefill on 3 seeds for none, sft and deep alignment.
# Resumable: an interrupted run continues from results/real.db.
REAL_MODEL ?= models/smollm2-135m-instruct
REAL_DATA ?= data/advbench.jsonl
REAL_HELDOUT ?= data/harmbench.jsonl
REAL_SEEDS ?= 0,1,2
REAL_STORE ?= results/real.db
REAL_HELDOUT_SOURCE = eval=harmbench:$(REAL_HELDOUT)\#as=heldout
REAL_SOURCES = data=advbench:$(REAL_DATA),$(REAL_HELDOUT_SOURCE)
REAL = $(BIN)/immunity bench --store $(REAL_STORE) --quiet model=$(REAL_MODEL) $(REAL_SOURCES)
REAL_DEFENSES ?= none,sft,deep-alignment,repnoise,circuit-breakers,lox,lapt,antidote-hypernet,ntl,condition-number
REAL_DEFENSES := $(REAL_DEFENSES),tar,vaccine,t-vaccine,booster,sophon,et,mlac,ilu,scratch
REAL_FTAAS = constrained-sft,antidote
REAL_ATTACKS = steering,refusal-ablation,embedding,prefill
# `sft` on Booster's adapter (its matched baseline) at the track's budget.
REAL_BOOSTER_MATCHED = defense.lora_r=32 defense.lora_alpha=4 defense.lora_targets=qkv defense.lr=4e-3
# The attack's budget, chosen on the validation split: `none` and `sft` on 3 seeds at 8, 10, 12 and 16
# steps (the default: where `sft` sits in 30-70 % and the base at least 20 points above it; 32 steps
# left both at 95 % under earlier code), and every defense's curve on seed 0 at 8, 12 and 16 (32 adds
# nothing: `sft` is at 95 % by 16), so that no verdict hangs on one point of a cliff.
REAL_VAL_STORE ?= results/real_val.db
REAL_VAL = $(BIN)/immunity bench --store $(REAL_VAL_STORE) --quiet model=$(REAL_MODEL) $(REAL_SOURCES) eval.split=val
real-budgets: real-prepare
	$(REAL_VAL) --seeds $(REAL_SEEDS) --defenses none,sft --grid attack.max_steps=8,10,12,16
	$(REAL_VAL) --seeds 0 --defenses $(REAL_DEFENSES),$(REAL_FTAAS) --grid attack.max_steps=8,12,16

# The applied gate (docs/protocol.md): every defense at x1, x2, x4 of its track budget on validation,
# seed 0, until it moves past sft's 3-seed range (needs `make real-budgets` first).
real-applied: real-prepare
	$(BIN)/python benchmarks/real_applied.py --model $(REAL_MODEL) --data advbench:$(REAL_DATA) \
	  --data $(REAL_HELDOUT_SOURCE) --store $(REAL_VAL_STORE)

real-prepare: install
	$(BIN)/pip install --quiet -e ".[gguf]"
	$(BIN)/immunity prepare smollm2-135m-instruct --out $(REAL_MODEL)
	$(BIN)/immunity prepare advbench --out $(REAL_DATA)
	$(BIN)/immunity prepare harmbench --out $(REAL_HELDOUT)

real: real-prepare
	$(REAL) --seeds $(REAL_SEEDS) --defenses $(REAL_DEFENSES),$(REAL_FTAAS)
	$(REAL) --seeds 0 --defenses $(REAL_DEFENSES) --grid attack=$(REAL_ATTACKS)
	$(REAL) --seeds $(REAL_SEEDS) --defenses none,sft,deep-alignment attack=prefill
	$(REAL) --seeds $(REAL_SEEDS) --defenses none,sft precision=float32
	$(REAL) --seeds 0 --defenses $(REAL_DEFENSES) attack.mode=full
	$(REAL) --seeds 0 --defenses sft,booster attack.continue_adapter=true
	$(REAL) --seeds 0 --defenses sft $(REAL_BOOSTER_MATCHED) --grid attack.continue_adapter=false,true
	$(MAKE) real-report

# The real track's benchmarks, into the release (each replaces its earlier file): the padding of
# its training sets, where alignment sits by answer position (from the models `make real` cached),
# and RepNoise's step against `sft`'s. real_cost.py's FLOP part wants a quiet machine: run it alone.
REAL_BENCH_OUT = results/release/benchmarks
real-benchmarks: real-prepare
	$(BIN)/python benchmarks/padding.py --out $(REAL_BENCH_OUT)/padding_smollm2.json --overwrite \
	  model=$(REAL_MODEL) $(REAL_SOURCES)
	$(BIN)/python benchmarks/kl_by_position.py --defenses sft,deep-alignment --seeds $(REAL_SEEDS) --split eval \
	  --out $(REAL_BENCH_OUT)/kl_by_position_smollm2.json --figure docs/figures/kl_by_position_smollm2.png \
	  --overwrite model=$(REAL_MODEL) $(REAL_SOURCES)
	$(BIN)/python benchmarks/real_cost.py --model $(REAL_MODEL) --repnoise --out $(REAL_BENCH_OUT)/repnoise_cost.json --overwrite

# The second family (issue: Gemma 3 270M from its base): the unaligned base, `sft` from it and the
# alignment-stage defenses (TAR on `sft`), under the same evaluation, judge, attack and seeds, into
# the same store (each row names its model); docs/real-track.md's Transfer table compares the two.
# First the attack's budget rule on this model's validation split (its own row of the budget block):
# SmolLM2's 12 steps stand only if they resolve here too.
GEMMA_MODEL ?= models/gemma-3-270m
comma := ,
GEMMA_DEFENSES ?= none,sft,vaccine,t-vaccine,booster,repnoise,circuit-breakers,deep-alignment,tar
real-gemma: real-prepare
	$(BIN)/immunity prepare gemma-3-270m --out $(GEMMA_MODEL)
	$(BIN)/immunity bench --store $(REAL_VAL_STORE) --quiet model=$(GEMMA_MODEL) $(REAL_SOURCES) eval.split=val \
	  --seeds $(REAL_SEEDS) --defenses none,sft --grid attack.max_steps=8,12,16
	$(BIN)/python benchmarks/real_applied.py --model $(GEMMA_MODEL) --data advbench:$(REAL_DATA) \
	  --data $(REAL_HELDOUT_SOURCE) --store $(REAL_VAL_STORE) --defenses $(subst none$(comma)sft$(comma),,$(GEMMA_DEFENSES))
	$(BIN)/immunity bench --store $(REAL_STORE) --quiet model=$(GEMMA_MODEL) $(REAL_SOURCES) \
	  --seeds $(REAL_SEEDS) --defenses $(GEMMA_DEFENSES)

# The real store's tables (its page, docs/history/real.md, is withdrawn until the evidence generator
# covers this store).
real-report: install
	$(BIN)/python -m immunity.reports.real --store $(REAL_STORE) --safetyworld results/safetyworld.db

# The released results (results/release/) are never deleted: only the working stores and runs.
clean:
	rm -rf $(VENV) runs
	find results -maxdepth 1 -type f -delete 2>/dev/null || true
