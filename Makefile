# Two entry points for a newcomer: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo stop test lint install clean

$(BIN)/sane: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sane

install: $(BIN)/sane

# The main job: build the archives, start TorchServe (production config.properties: token auth on,
# the token is read from out/serve/key_file.json), explain the bundled pair over HTTP, leave it running.
demo: install
	$(BIN)/sane archive
	$(BIN)/sane serve --restart
	$(BIN)/sane request examples/query.jpg examples/reference.jpg --archive sane --out out/demo
	@echo "TorchServe is still running (HTTP :8080, gRPC :7070, token in out/serve/key_file.json)."
	@echo "Stop it with: make stop   (or: .venv/bin/sane serve --stop)"

stop:
	$(BIN)/sane serve --stop

test: install
	$(BIN)/ruff check sane tests bench experiments examples handlers clients
	$(BIN)/pytest -q

clean:
	rm -rf out .pytest_cache
