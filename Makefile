# Two entry points for a newcomer: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo stop test lint install clean haproxy chromium

$(BIN)/sane: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sane

install: $(BIN)/sane

# HAProxy (the gateway) comes from the system's packages: installed here if missing and we are root.
haproxy:
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q haproxy; } || \
	  { echo "HAProxy is needed: sudo apt-get install haproxy (Debian/Ubuntu, 2.6 or later)"; exit 1; }

# Chromium and chromedriver (the study page's tests drive a real browser), the same way.
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q chromium chromium-driver; } || \
	  { echo "Chromium is needed by the tests: sudo apt-get install chromium chromium-driver (Debian)"; exit 1; }

# The main job: build the archives, start a gateway of one (`sane deploy up --instances 1`: TorchServe
# on loopback behind HAProxy, which checks API keys that do not expire), make a key, explain the
# bundled pair over HTTP through the gateway with the `sane` archive, leave it running.
demo: install haproxy
	$(BIN)/sane archive
	$(BIN)/sane deploy down >/dev/null
	$(BIN)/sane deploy up --instances 1
	KEY=$$($(BIN)/sane deploy keys add demo --replace --quiet) && \
	  $(BIN)/sane request examples/query.jpg examples/reference.jpg --archive sane --key "$$KEY" --out out/demo
	@echo "The explanation at a glance: out/demo/card.png (overlays out/demo/*_saliency.png, numbers out/demo/result.json)"
	@echo "The gateway is still running (HTTP :8080, gRPC :7070). Make yourself a key (printed once):"
	@echo "  .venv/bin/sane deploy keys add NAME    then send 'Authorization: Bearer <key>'"
	@echo "Stop it with: make stop   (or: .venv/bin/sane deploy down)"

stop:
	$(BIN)/sane deploy down

test: install haproxy chromium
	$(BIN)/ruff check sane tests bench experiments examples handlers clients
	$(BIN)/pytest -q

clean:
	rm -rf out .pytest_cache
