# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/wsroute demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable import hook (daemon/ -> wsroute), so it
# checks a link farm laid out like the installed package.
TYPECHECK := $(VENV)/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/wsroute
	ln -s $(CURDIR)/daemon/*.py $(CURDIR)/daemon/py.typed $(TYPECHECK)/wsroute/
	for d in $(CURDIR)/daemon/*/; do d=$${d%/}; [ -e $$d/__init__.py ] && ln -s $$d $(TYPECHECK)/wsroute/ || true; done
	ln -s $(CURDIR)/plugins $(TYPECHECK)/wsroute/plugins
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy -p wsroute
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy tests/typing

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) build *.egg-info
