# make play: create .venv, install, serve the bundled model at http://127.0.0.1:7860
# make test: install test deps, run ruff and the whole test suite
# On CPU machines torch==2.13.0 is installed first, so pip never pulls the CUDA build.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: play test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# --dtype auto, --int8 auto: the page serves ~8 s after launch with the eager step, while the step
# compiles in the background (~100 s the first time on 2 cores, ~20 s with a warm inductor cache)
# and is swapped in: docs/benchmarks.md. --no-compile keeps it eager.
play: $(STAMP)
	$(BIN)/worldstream play --host 127.0.0.1 --port 7860

test: $(STAMP)
	$(BIN)/ruff check app engine eval kernels train world tests scripts
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/worldstream bench --preset small

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
