# moetrain — two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# CPU-only machines get the CPU build of torch (an unpinned torch pulls a multi-GB CUDA build).
# On a GPU / NPU host set TORCH_SPEC to the build that matches the driver, e.g. TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
# Optional wheel index for torch (e.g. PyTorch's CPU-only index on a machine whose PyPI torch is CUDA).
TORCH_INDEX_URL ?=
STAMP  := $(VENV)/.moetrain-installed
# The tested set of versions (every package but torch, which TORCH_SPEC chooses); `make lock` rewrites it.
LOCK   := requirements/lock.txt
# Holds the torch choice, rewritten only when it changes, so a new TORCH_SPEC reinstalls.
TORCH_CHOICE := $(VENV)/.torch-choice
TORCH_WANTED := $(TORCH_SPEC) $(TORCH_INDEX_URL)

.PHONY: install test demo bench lint lock clean FORCE

install: $(STAMP)

$(TORCH_CHOICE): FORCE
	@mkdir -p $(VENV)
	@if [ "$$(cat $@ 2>/dev/null)" != "$(TORCH_WANTED)" ]; then echo "$(TORCH_WANTED)" > $@; fi

$(STAMP): pyproject.toml $(LOCK) $(TORCH_CHOICE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Another TORCH_SPEC than the installed one: remove torch so pip installs the requested build.
	if [ "$$(cat $(VENV)/.torch-installed 2>/dev/null)" != "$(TORCH_WANTED)" ]; then \
		$(PY) -m pip uninstall --quiet -y torch || true; fi
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) \
		$(if $(filter torch==2.13.0,$(TORCH_SPEC)),-c $(LOCK)) "$(TORCH_SPEC)"
	echo "$(TORCH_WANTED)" > $(VENV)/.torch-installed
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

FORCE:

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) tools/bench_all.py

lint: install
	$(VENV)/bin/ruff check moetrain tools ckpt_converters tests

# Re-pin requirements/lock.txt to what is installed now (after changing dependencies; then make test).
lock: install
	$(PY) -m pip install --quiet --upgrade -e ".[dev]"
	$(PY) tools/write_lock.py

clean:
	rm -rf $(VENV) runs demo_out
