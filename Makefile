# The README's two commands: `make demo` and `make test`. Both install what
# they need on a fresh Debian machine and start dockerd when none answers.
PYTHON ?= python3
VENV ?= .venv
BUILDSYS = $(VENV)/bin/buildsys
DEMO ?= jupyter r-base

.PHONY: install deps venv dockerd demo test lint bench clean stack-svg

install: deps venv

deps:
	./scripts/install-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

dockerd: deps
	./scripts/ensure-dockerd.sh

# The main job on the bundled example stack: check the committed locks, fetch
# what they pin, build with --verify (rebuild from nothing, compare), test the
# images, print their IDs and digests and the command that starts JupyterLab.
demo: install dockerd
	$(BUILDSYS) graph
	$(BUILDSYS) lock --check $(DEMO)
	$(BUILDSYS) fetch $(DEMO)
	$(BUILDSYS) build --verify $(DEMO)
	$(BUILDSYS) test $(DEMO)
	$(BUILDSYS) build $(DEMO)
	@echo "JupyterLab and TensorBoard on this folder: $(BUILDSYS) up jupyter   (stop: $(BUILDSYS) down jupyter)"

# pytest's exit 5 (no test collected) is a failure here, with its own word.
test: install dockerd
	@$(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The gates that keep the house (docs/design.md): ruff with its complexity rule, mypy
# --strict on buildsys (pyproject [tool.mypy]), the tests type-checked with strict less
# the rules that ask for annotations (fixtures stay light; what is written is still
# checked, bodies of unannotated functions included), and the import layers.
TESTS_MYPY = --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls --allow-any-generics --no-warn-return-any
lint: venv
	$(VENV)/bin/ruff check buildsys tests bench
	$(VENV)/bin/mypy buildsys
	$(VENV)/bin/mypy $(TESTS_MYPY) tests
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_architecture.py

bench: install dockerd
	$(VENV)/bin/python bench/bench_root.py
	$(VENV)/bin/python bench/bench_chain.py
	$(VENV)/bin/python bench/bench_trust.py
	$(VENV)/bin/python bench/bench_layers.py
	$(VENV)/bin/python bench/bench_big_layer.py

# The README's picture of the bundled stack, from the recipes (needs graphviz's `dot`).
stack-svg: venv
	@command -v dot >/dev/null || { echo "make stack-svg needs graphviz: apt-get install graphviz" >&2; exit 1; }
	$(BUILDSYS) graph --format dot | dot -Tsvg -o docs/stack.svg

clean:
	rm -rf .buildsys
