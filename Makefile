# Two commands do all set-up: `make demo` and `make test`. Both install into .venv first, once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install install-dev demo services services-stop test test-all lint format clean

install: $(STAMP)
install-dev: $(DEV_STAMP)

# Reinstalls only when the dependency pins change. requirements.lock pins every transitive package.
# --no-compile: Python compiles what it imports on first use, not all of torch up front; with the
# venv's own pip (no upgrade) a fresh install takes 2 min 13 s instead of about 2 min 55 (measured).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --no-compile -c requirements.lock -e .
	@touch $@

# The test and lint tools (pytest, moto's server, ruff, mypy, import-linter) on top: the demo does without them.
# CompVis' ldm code, the reference `rdm import ldm` is tested against, comes as stable-diffusion-sdkit,
# whose metadata pins 2022 releases (pytorch-lightning 1.4, open-clip 2.0) it does not need for the
# model classes: it goes in without them, its real imports (einops, omegaconf) come with the dev extra.
$(DEV_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet --no-compile -c requirements.lock -e '.[dev]'
	$(VENV)/bin/python -m pip install --quiet --no-compile --no-deps stable-diffusion-sdkit==2.1.5
	@touch $@

demo: install  ## run the pipeline on the built-in demo data (dvc repro), then print the style table
	dvc repro
	@echo
	@echo "Demo outputs:"
	@echo "  data/raw/            generated artworks (train, d_train, styles/<style>, prompts.csv)"
	@echo "  data/prepared/       checked images by sha256 (images/<split>/) and manifests: train, d_train, styles, prompts"
	@echo "  reports/prepare/     ingestion counts per side;  reports/rejected/  every rejected file and why"
	@echo "  models/clip/         the CLIP model (open_clip local-dir);  reports/clip.json  its held-out retrieval"
	@echo "  data/embeddings/     CLIP vectors;  data/qdrant/  the collections;  data/neighbors/  training neighbours"
	@echo "  models/autoencoder/  the autoencoder;  reports/autoencoder.json  its held-out PSNR"
	@echo "  reports/autoencoder/ style images through the latent (the ceiling);  reports/reconstruct.json  per style"
	@echo "  models/rdm/          the trained model (samples.png: validation images above, samples below)"
	@echo "  data/samples/        every style by retrieval and by postfix: images/, samples.jsonl, grid-*.png"
	@echo "  reports/evaluate/    the style table (CSV) and charts (style_accuracy.png, target_logits.png)"
	@echo "  mlflow.db            the MLflow runs and the registered model rdm: mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@echo
	rdm collections
	@echo
	rdm report
	@echo
	@echo 'Try: rdm sample --prompt "a red star" --style neon --style mosaic -n 4 --out samples/star'
	@echo '     rdm search --text "a red star in the style of pointillism" --collection d_train -k 8'


services: install  ## Prefect + MLflow servers on 127.0.0.1 and the three deployments served (no Docker)
	rdm services start

services-stop:  ## stop what `make services` started
	rdm services stop

test: install-dev  ## the suite; the slow end-to-end tests too where CI is set (as in .ci/run), or with test-all
	pytest $(if $(CI),,-m "not slow")

test-all: install-dev  ## the whole suite, slow end-to-end tests included (what CI runs)
	pytest

lint: install-dev  ## ruff, mypy, and the architecture's import contracts (docs/architecture.md)
	ruff check src flows tests
	ruff format --check src flows tests
	mypy
	lint-imports

format: install-dev
	ruff check --fix src flows tests
	ruff format src flows tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
