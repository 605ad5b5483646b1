# pycni: run as root. See README.md.
PYTHON      ?= python3
PREFIX      ?= /opt/pycni
CNI_BIN_DIR ?= /opt/cni/bin
# prefixed: pycni-<plugin> beside the reference plugins; reference: bridge, host-local, loopback...
CNI_NAMES   ?= prefixed
# agent: executables forward to pycni-agent on AGENT_SOCKET, in-process when it is not running;
# direct: always in-process
SHIM         ?= agent
AGENT_SOCKET ?= /run/pycni/agent.sock
# agent shims compiled from cni_plugin/agent/shim.c: auto (when cc is there), yes (or fail), no (Python)
COMPILED_SHIM ?= auto
VENV        ?= .venv

.PHONY: install uninstall test lint bench demo clean bundle image

install:
	$(PYTHON) scripts/install.py --prefix $(PREFIX) --bin-dir $(CNI_BIN_DIR) --names $(CNI_NAMES) \
		--shim $(SHIM) --agent-socket $(AGENT_SOCKET) --compiled-shim $(COMPILED_SHIM)

uninstall:
	$(PYTHON) scripts/install.py --bin-dir $(CNI_BIN_DIR) --uninstall

test:
	bash scripts/test

lint: $(VENV)/bin/python
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The self-contained folder (no python3 needed on the node): build/bundle/pycni
bundle: $(VENV)/bin/python
	$(VENV)/bin/python scripts/bundle

# The OCI image (pycni-install + pycni-agent) from the bundle, no Docker: build/bundle/pycni-image.tar
image: bundle
	$(VENV)/bin/python scripts/image

bench:
	$(PYTHON) scripts/bench $(BENCH_ARGS)

demo:
	$(PYTHON) scripts/demo.py --bin-dir $(CNI_BIN_DIR)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

$(VENV)/bin/python:
	bash scripts/bootstrap
