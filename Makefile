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

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) tools/bench_all.py

lint: install
	$(VENV)/bin/ruff check moetrain tools ckpt_converters tests

clean:
	rm -rf $(VENV) runs demo_out
