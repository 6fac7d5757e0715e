# The two commands of the README: `make demo` (the main job) and `make test`. Both create the venv
# and install the project in it with `pip install -e .` on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo demo-folder test test-default test-compat compat-install gpu-check bench clean

# torch must be importable when setup.py runs, and the project builds against the torch in the
# venv (--no-build-isolation) rather than downloading another multi-GB copy into a build env.
$(VENV)/.installed: pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" setuptools wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The second venv: torch 2.11.0 and triton 3.6.0. PyPI's torch 2.11 would pull ~3 GB of nvidia-*
# wheels pinned to its own versions; torch cannot be imported without those libraries (its
# libtorch_cuda.so needs libcudnn.so.9, libnccl.so.2, ...), but any build with the same sonames
# (CUDA 13.0) serves on a CPU-only machine. So torch is installed with --no-deps, the first venv's
# nvidia/ folder is linked in (torch finds it through its RPATH, $ORIGIN/../../nvidia/...: 3.2 GB
# of disk not spent twice), the small cuda-* packages are installed at the first venv's versions,
# and torch's pure-Python requirements are listed here (pip then warns that torch 2.11 wanted other
# versions of them: expected). The operator is built (CUDA kernels for sm_80 only: a compile check
# here) and tested in a copy of the sources (build/compat-torch2.11), so that its lam_ops/_C*.so,
# built against torch 2.11, never meets the first venv's.
COMPAT_VENV ?= .venv-torch2.11
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_SRC := build/compat-torch2.11
COMPAT_TESTS := tests/test_cpp.py tests/test_cuda.py tests/test_functional.py tests/test_lam_edge_cases.py tests/test_modules.py tests/test_triton.py tests/test_versions.py

# `make test`: every test in $(VENV) (torch 2.14.1), then the operator's tests under the
# oldest supported torch (2.11.0 + triton 3.6.0, the GPU machine's stack) in a second venv.
# COMPAT=0 skips the second part.
COMPAT ?= 1
test: lint test-default $(if $(filter 1,$(COMPAT)),test-compat)

# (the second venv first: a test imports this venv's build under its torch)
test-default: install $(if $(filter 1,$(COMPAT)),$(COMPAT_VENV)/.installed)
	LAM_OPS_OTHER_TORCH_PYTHON=$(if $(filter 1,$(COMPAT)),$(abspath $(COMPAT_PY))) $(PY) -m pytest -q $(PYTEST_ARGS) tests

$(COMPAT_VENV)/.installed: | $(VENV)/.installed
	test -x $(COMPAT_PY) || python3 -m venv $(COMPAT_VENV)
	$(COMPAT_PY) -m pip install -q --upgrade pip
	$(COMPAT_PY) -m pip install -q --no-deps "torch==2.11.0"
	ln -sfn "$$($(PY) -c 'import nvidia, os; print(os.path.abspath(nvidia.__path__[0]))')" \
		"$$($(COMPAT_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia"
	$(PY) -m pip freeze | grep -iE '^cuda-' > $(COMPAT_VENV)/cuda-packages.txt
	$(COMPAT_PY) -m pip install -q --no-deps -r $(COMPAT_VENV)/cuda-packages.txt
	$(COMPAT_PY) -m pip install -q "triton==3.6.0" filelock "typing-extensions>=4.10" "setuptools>=64,<82" "sympy>=1.13.3" \
		"networkx>=2.5.1" jinja2 "fsspec>=0.8.5" numpy wheel ninja pytest pytest-timeout
	touch $@

compat-install: $(COMPAT_VENV)/.installed
	mkdir -p $(COMPAT_SRC)
	tar -cf - --exclude='*.so' --exclude=__pycache__ --exclude=_C.build.json setup.py pyproject.toml README.md \
		lam_ops csrc tests benchmarks | tar -xf - -C $(COMPAT_SRC)
	test -f $(COMPAT_SRC)/lam_ops/_C.build.json -a $(COMPAT_SRC)/lam_ops/_C.build.json -nt $(COMPAT_VENV)/.installed \
		-a -z "$$(find $(COMPAT_SRC)/csrc $(COMPAT_SRC)/setup.py -newer $(COMPAT_SRC)/lam_ops/_C.build.json)" \
		|| (cd $(COMPAT_SRC) && TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-8.0} MAX_JOBS=$${MAX_JOBS:-2} \
		$(abspath $(COMPAT_PY)) -m pip install -q --no-build-isolation --no-deps -e .)

test-compat: compat-install
	cd $(COMPAT_SRC) && $(abspath $(COMPAT_PY)) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) $(COMPAT_TESTS)

# The one-shot check on a GPU machine (scripts/gpu_check.sh): its own python3, no venv, no network.
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_OUT)

# The synthetic scribble set, BLPSeg trained on the CPU with the fused C++ LAM, and its evaluation.
# Each `make demo` trains anew: --overwrite replaces the run in $(DEMO_RUN) (docs/training.md, "Run folders").
DEMO_RUN ?= runs/synthetic
demo: install
	$(VENV)/bin/blpseg make-synthetic --root data/synthetic
	$(VENV)/bin/blpseg train --config configs/synthetic.yaml --overwrite out_dir=$(DEMO_RUN) data.root=data/synthetic
	$(VENV)/bin/blpseg eval --checkpoint $(DEMO_RUN)/last.pt eval.flip=true
	@echo "run files: $(DEMO_RUN)/ (last.pt, config.yaml, train.csv, val.csv, eval.json, eval_boundary_precision.png, tensorboard/: tensorboard --logdir $(DEMO_RUN))"

# The same, from the plain folder format of one's own data (docs/training.md, "Your own data").
FOLDER_RUN ?= runs/synthetic_folder
demo-folder: install
	$(VENV)/bin/blpseg make-synthetic --root data/synthetic
	$(VENV)/bin/blpseg export-folder --config configs/synthetic.yaml data.root=data/synthetic --out data/synthetic_folder
	$(VENV)/bin/blpseg train --config configs/synthetic_folder.yaml --overwrite out_dir=$(FOLDER_RUN) data.root=data/synthetic_folder
	$(VENV)/bin/blpseg eval --checkpoint $(FOLDER_RUN)/last.pt eval.flip=true

# The LAM operator benchmark (docs/benchmarks.md); results in benchmarks/results/.
bench: install
	$(PY) benchmarks/bench_lam.py

# Lint and format checks (configured in pyproject.toml and .clang-format), the first step of `make test`.
CXX_SOURCES = $(shell find csrc tests/cpp examples -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')
.PHONY: lint
lint: install
	$(PY) -m pip install -q --group lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CXX_SOURCES)

clean:
	rm -rf build *.egg-info lam_ops/_C*.so lam_ops/_C.build.json $(VENV) $(COMPAT_VENV)
