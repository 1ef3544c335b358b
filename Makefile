# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv and install first:
# the demo only the package (`pip install -e .`), the tests and lint the test extra and npm too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DO_NOT_TRACK := 1

.PHONY: demo test lint bench install clean docs docs-serve

$(BIN)/.installed-package: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed: pyproject.toml tests/e2e/ui/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	if command -v npm >/dev/null 2>&1; then npm ci --prefix tests/e2e/ui --no-audit --no-fund --silent; fi
	touch $@ $(BIN)/.installed-package

install: $(BIN)/.installed

# DEMO_ARGS=--keep-server keeps a Prefect server (and its UI, with the runs) up until Ctrl-C.
demo: $(BIN)/.installed-package
	$(BIN)/python -m prefect_gpt_image.demo $(DEMO_ARGS)

# Two processes, a test file each at a time (each with its own Prefect server and stacks: the
# tests wait on servers and latencies far more than they compute).
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The benchmarks of bench/README.md, one after another (about 20 minutes on 2 cores; scale.py,
# 1,000 to 10,000 rows and a rerun, about 6 of them on a quiet machine).
bench: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	for b in throughput overhead rerun memory stream compose pipeline scale stops; do $(BIN)/python bench/$$b.py || exit 1; done
	$(BIN)/python bench/throughput.py --n 1000

lint: $(BIN)/.installed
	$(BIN)/ruff check prefect_gpt_image tests bench deployments
	$(BIN)/ruff format --check prefect_gpt_image tests bench deployments
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml, docs/): the `docs` extra installed into .venv once (the venv
# made if missing), then a strict build into site/ (a broken link, anchor or reference, or a
# docstring griffe cannot read, fails it).
$(BIN)/.docs-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf $(VENV) gpt-image-output site .pytest_cache .mypy_cache .ruff_cache
