# One-command set-up and runs. Every target creates .venv/ first if it is missing.
PYTHON ?= python3.11
VENV ?= $(CURDIR)/.venv
BIN := $(VENV)/bin
export PATH := $(BIN):$(PATH)

QUICK := -S data.source=digits -S data.max_per_class=60 \
	-S backbone.width=8 -S train.steps=30 -S train.checkpoint_every=15 -S train.log_every=10 \
	-S variants.regression.steps=30 -S variants.diffusion.timesteps=100 \
	-S evaluator.epochs=20 -S sampling.per_class=2 -S sampling.animate=4 \
	-S evaluate.bootstrap=20 -S evaluate.nll_images=4

.PHONY: setup run quick test check clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

check: setup
	$(BIN)/python -m genladder.check

run: setup
	$(BIN)/dvc repro

quick: setup
	$(BIN)/dvc exp run $(QUICK)

test: setup
	$(BIN)/python -m pytest -ra

clean-venv:
	rm -rf $(VENV)
