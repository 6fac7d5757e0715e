# The two commands of the README: `make demo` (the main job) and `make test`. Both create the venv
# and install the project in it with `pip install -e .` on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

# torch must be importable when setup.py runs, and the project builds against the torch in the
# venv (--no-build-isolation) rather than downloading another multi-GB copy into a build env.
$(VENV)/.installed: pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" setuptools wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# The synthetic scribble set, BLPSeg trained on the CPU with the fused C++ LAM, and its evaluation.
DEMO_RUN ?= runs/synthetic
demo: install
	$(VENV)/bin/blpseg make-synthetic --root data/synthetic
	$(VENV)/bin/blpseg train --config configs/synthetic.yaml out_dir=$(DEMO_RUN) data.root=data/synthetic
	$(VENV)/bin/blpseg eval --checkpoint $(DEMO_RUN)/last.pt eval.flip=true
	@echo "run files: $(DEMO_RUN)/ (last.pt, config.yaml, train.csv, val.csv, eval.json, eval_boundary_precision.png, tensorboard/: tensorboard --logdir $(DEMO_RUN))"

# The LAM operator benchmark (benchmarks/README section of README.md); results in benchmarks/results/.
bench: install
	$(PY) benchmarks/bench_lam.py

# Lint and format checks (configured in pyproject.toml and .clang-format); not part of `make test` yet.
CXX_SOURCES = $(shell find csrc tests/cpp -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
.PHONY: lint
lint: install
	$(PY) -m pip install -q --group lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

clean:
	rm -rf build *.egg-info lam_ops/_C*.so $(VENV)
