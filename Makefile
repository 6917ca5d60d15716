# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
SPACY_MODEL := build/spacy/zh_lakala
MODEL := models/lakala.tar.gz
NLU_RESULTS := results/nlu
CORE_RESULTS := results/core
WEB_INSTALLED := web/node_modules/.installed
CHROMIUM := /usr/bin/chromium

# Rasa 3.6 runs on Python 3.8-3.10; prefer pyenv's 3.10, then one on PATH.
PYTHON310 ?= $(firstword $(wildcard $(shell pyenv root 2>/dev/null)/versions/3.10.*/bin/python) $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python) $(shell command -v python3.10 2>/dev/null))

export TF_CPP_MIN_LOG_LEVEL ?= 2
export SQLALCHEMY_SILENCE_UBER_WARNING ?= 1
export PYTHONDONTWRITEBYTECODE ?= 1
export TQDM_DISABLE ?= 1
# Rasa's usage telemetry is on by default; a merchant-facing bot keeps it off.
export RASA_TELEMETRY_ENABLED ?= false

NLU_DATA := $(shell find data -name '*.yml' 2>/dev/null)
NLU_CODE := $(wildcard lakala_nlu/*.py) lakala_nlu/userdict.txt

.PHONY: help install spacy train run test lint validate unit nlu-test nlu-blind core-test e2e security browser web chromium clean lock \
	wechat wechat-demo bench-wechat bench review cluster services cluster-test tickets

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "Python 3.10 is required (Rasa 3.6 supports 3.8-3.10) and none was found."; \
	  echo "Install it, e.g. 'pyenv install 3.10.13' or 'apt-get install python3.10 python3.10-venv',"; \
	  echo "or point to it: make PYTHON310=/path/to/python3.10 ..."; exit 1; fi
	@$(PYTHON310) -c 'import sys; assert sys.version_info[:2] == (3, 10), sys.version' \
	  || { echo "$(PYTHON310) is not Python 3.10"; exit 1; }
	$(PYTHON310) -m venv $(VENV)

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip==24.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed  ## create the virtual environment and install pinned packages

$(SPACY_MODEL)/meta.json: lakala_nlu/spacy_zh.py lakala_nlu/userdict.txt $(VENV)/.installed
	$(BIN)/python -m lakala_nlu.spacy_zh $(SPACY_MODEL)

spacy: $(SPACY_MODEL)/meta.json  ## build the Chinese spaCy pipeline from files in the repo

$(MODEL): config.yml domain.yml $(NLU_DATA) $(NLU_CODE) $(SPACY_MODEL)/meta.json
	@mkdir -p results
	@echo "training (log: results/train.log) ..."
	@start=$$(date +%s); $(BIN)/rasa train --fixed-model-name lakala --out models --force \
	  > results/train.log 2>&1 || { tail -n 40 results/train.log; exit 1; }; \
	  echo "trained in $$(( $$(date +%s) - start )) s: $@ ($$(du -h $@ | cut -f1))"
	@touch $@

train: $(MODEL)  ## train the model when its inputs changed

# The web chat widget (rasa-webchat) from the committed lockfile; served locally, no CDN.
$(WEB_INSTALLED): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required for the web chat (Node.js 18 or newer)"; exit 1; }
	cd web && npm ci --no-audit --no-fund
	touch $@

web: $(WEB_INSTALLED)  ## install the web chat widget from web/package-lock.json

# Browser tests use Debian's Chromium (Playwright cannot download browsers here) and need a
# CJK font, without which Chinese is drawn as empty boxes.
chromium:  ## install Debian's chromium and fonts-noto-cjk if missing (as root)
	@if [ -x $(CHROMIUM) ] && fc-list :lang=zh 2>/dev/null | grep -q .; then exit 0; fi; \
	cmd="apt-get update && apt-get install -y --no-install-recommends chromium fonts-noto-cjk"; \
	if [ "$$(id -u)" = 0 ]; then echo "$$cmd"; bash -c "DEBIAN_FRONTEND=noninteractive $$cmd"; \
	else echo "The browser tests need Chromium and a CJK font; as root run: $$cmd"; exit 1; fi

run: $(MODEL) $(WEB_INSTALLED)  ## install, build, train if needed, then start the bot and the web chat
	@bash scripts/run.sh

cluster: $(MODEL) $(WEB_INSTALLED)  ## several Rasa replicas, two action servers and nginx, on PostgreSQL and Redis
	@bash scripts/cluster.sh

services:  ## install (as root) and start PostgreSQL, Redis and nginx for the cluster
	@bash scripts/services.sh

cluster-test: $(MODEL) services  ## the cluster under faults: replicas killed, servers hung, races (tests/cluster)
	$(BIN)/python -m pytest -q tests/cluster

lint: $(VENV)/.installed  ## static checks
	$(BIN)/ruff check actions lakala_common lakala_nlu lakala_server tests scripts bench

validate: $(VENV)/.installed  ## rasa data validate, failing on any warning
	$(BIN)/python scripts/validate.py

unit: $(SPACY_MODEL)/meta.json  ## tests that need no trained model
	$(BIN)/python -m pytest -q tests/unit

nlu-test: $(MODEL)  ## rasa test nlu on tests/nlu_test.yml with accuracy gates
	rm -rf $(NLU_RESULTS)
	$(BIN)/rasa test nlu --model $(MODEL) --nlu tests/nlu_test.yml --out $(NLU_RESULTS) --no-plot
	$(BIN)/python scripts/nlu_gate.py $(NLU_RESULTS) tests/nlu_test.yml

nlu-blind: $(MODEL)  ## intent accuracy >= 0.95 on the blind set tests/blind/blind_set.tsv, >= 0.9 on handoff_set.tsv
	@mkdir -p results
	$(BIN)/python bench/nlu_eval.py --model $(MODEL) --nlu tests/blind/blind_set.tsv \
	  --out results/nlu_blind.json --min-intent-accuracy 0.95 --show-errors 2> >(grep -v -E 'DEBUG|debug|jieba|Building prefix|Loading model|Prefix dict|raise_warning' >&2) >/dev/null
	$(BIN)/python bench/nlu_eval.py --model $(MODEL) --nlu tests/blind/handoff_set.tsv \
	  --out results/nlu_blind_handoff.json --min-intent-accuracy 0.9 --show-errors 2> >(grep -v -E 'DEBUG|debug|jieba|Building prefix|Loading model|Prefix dict|raise_warning' >&2) >/dev/null

core-test: $(MODEL)  ## rasa test on tests/test_stories.yml, failing on any wrong prediction
	rm -rf $(CORE_RESULTS)
	$(BIN)/rasa test core --model $(MODEL) --stories tests/test_stories.yml --out $(CORE_RESULTS) --fail-on-prediction-errors --no-plot

e2e: $(MODEL)  ## real Rasa and action servers, talked to over HTTP
	$(BIN)/python -m pytest -q tests/e2e

browser: $(MODEL) $(WEB_INSTALLED) chromium  ## the web chat page in headless Chromium against the real servers
	$(BIN)/python -m pytest -q tests/browser

security: $(MODEL)  ## attacks on the real servers (tests/security), each shown refused
	$(BIN)/python -m pytest -q tests/security

wechat: $(MODEL)  ## WeChat channel: crypto vectors, protocol, real servers through the simulator
	$(BIN)/python -m pytest -q tests/wechat

wechat-demo: $(MODEL) $(WEB_INSTALLED)  ## chat through the WeChat channel from this terminal, no account needed
	@bash scripts/wechat_demo.sh

# Trains peer configs and ours on the same data (bench/configs/, config.yml), then measures
# NLU, startup, memory and load with the real servers: bench/results/latest.{md,json,png}.
# BENCH_RUNS, BENCH_USERS and BENCH_TRAIN_RUNS shrink or grow it; see bench/run.py --help.
bench: $(VENV)/.installed $(SPACY_MODEL)/meta.json  ## benchmark ours vs stock Rasa configs (slow: ~40 min)
	$(BIN)/python bench/run.py

bench-wechat: $(MODEL)  ## WeChat acknowledgement latency under a steady stream (localhost, bounded)
	$(BIN)/python bench/wechat_ack.py --rate 5 --seconds 60

# REVIEW_ARGS, e.g. "--since 24h --below 0.5 --db URL"; see python -m lakala_server.review --help.
review: $(VENV)/.installed  ## unsure messages from the tracker store, masked and grouped: results/review.yml
	$(BIN)/python -m lakala_server.review $(REVIEW_ARGS)

# TICKETS_ARGS, e.g. "show HJ20261203ABC123" or "close HJ20261203ABC123 --note 已回电，已解决".
tickets: $(VENV)/.installed  ## callback tickets: open ones; TICKETS_ARGS="show ID" or "close ID --note ..."
	$(BIN)/python -m actions.tickets_cli $(TICKETS_ARGS)

test: lint validate unit nlu-test nlu-blind core-test e2e security browser wechat cluster-test  ## run every test

lock:  ## re-pin requirements.txt from requirements.in
	$(BIN)/python -m pip install --quiet -r requirements.in
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^pkg_resources' > requirements.txt

clean:  ## remove build outputs (keeps the virtual environment)
	rm -rf build models/*.tar.gz results .pytest_cache
