# Two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit venv clean wheelhouse install-service

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

# The service's install path (systemd/README.md): wsroute and every dependency
# as wheels, built where there is network access ...
WHEELHOUSE := dist/wheelhouse
wheelhouse: $(STAMP)
	rm -rf $(WHEELHOUSE)
	$(BIN)/pip wheel --quiet --wheel-dir $(WHEELHOUSE) '.[all,uvloop]'
	systemd/install-service --print-target $(BIN)/python > $(WHEELHOUSE)/BUILT-FOR
	rm -rf build
	@echo "$(WHEELHOUSE): $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels for $$(cat $(WHEELHOUSE)/BUILT-FOR); install with: sudo make install-service"

# ... and installed from them on the server (as root; no network, no .venv needed).
install-service:
	systemd/install-service $(WHEELHOUSE)

clean:
	rm -rf $(VENV) build dist *.egg-info
