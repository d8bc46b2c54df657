# One place for the commands the README and CI use.  `make test` works on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= test,tfds

.PHONY: install demo test test-slow test-notebooks wheel bench rehearse clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/activate
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"

# The main job on the embedded default data (scikit-learn digits): figures + report.md in runs/wide_deep_local.
demo: install
	$(BIN)/rsim study wide_deep --config local --workdir runs/wide_deep_local

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -m slow

test-notebooks:
	$(MAKE) install EXTRAS=test,tfds,notebooks
	RSIM_NOTEBOOK_TINY=1 RSIM_NOTEBOOK_WORKDIR=$$(mktemp -d) $(BIN)/python -m pytest -p no:cacheprovider \
	  -o addopts="" --nbmake colab/

# A wheel of the package, dist/rsim_jax-<version>-py3-none-any.whl, to upload to a Colab session instead of
# installing from a git URL (colab/README.md). pip builds it in an isolated environment from pyproject.toml's
# build requirements, so it needs nothing beyond pip (and an index to fetch setuptools from, once).
wheel: $(BIN)/activate
	rm -f dist/rsim_jax-*.whl
	$(BIN)/python -m pip wheel -q --no-deps --wheel-dir dist .
	@ls dist/rsim_jax-*.whl

# Multi-host rehearsal before paying for a slice: train + checkpoint + resume + all-layer CKA in 2 JAX processes
# × 4 CPU devices (gloo), compared with 1 process × 8 devices; fails if they differ by more than 1e-5.
rehearse: install
	$(BIN)/rsim rehearse --workdir runs/rehearse

bench: install
	$(BIN)/python benchmarks/cka_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
