# Two entry points for a newcomer: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean

$(BIN)/sane: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sane

install: $(BIN)/sane

demo: install
	$(BIN)/sane explain examples/query.jpg examples/reference.jpg --out out/demo --mode both
	@echo "heat maps: out/demo/query_saliency.png out/demo/reference_saliency.png"

test: install
	$(BIN)/ruff check sane tests bench
	$(BIN)/pytest -q

clean:
	rm -rf out .pytest_cache
