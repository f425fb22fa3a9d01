# Two entry points (README): `make demo` runs the main job, `make test` the test suite.
# Both create or reuse the project virtual environment $(VENV).
#
# Torch is never replaced: if the environment already has torch (e.g. a CPU build), the
# package is installed under a constraint pinning that exact version, so pip cannot pull
# another (CUDA) build on top of it. A fresh environment gets $(TORCH_SPEC) first; a GPU user
# who wants a specific CUDA build installs it into $(VENV) before running make (README).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.monai_diffreg-installed
ML_STAMP := $(VENV)/.monailabel-installed
CONSTRAINTS := $(VENV)/torch-constraint.txt

.PHONY: setup demo test monailabel clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(CONSTRAINTS)
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

# MONAI Label 0.8.5 pins would replace torch: its runtime needs come from the extra, itself with --no-deps
$(ML_STAMP): $(STAMP)
	$(PY) -m pip install -c $(CONSTRAINTS) -e ".[dev,monailabel]"
	$(PY) -m pip install --no-deps "monailabel==0.8.5"
	touch $(ML_STAMP)

setup: $(STAMP)

monailabel: $(ML_STAMP)

demo: $(STAMP)
	$(PY) -m monai.bundle run --config_file bundles/vxm_prob/configs/inference.json --output_dir outputs/demo

# OpenMP threads that spin while waiting slow parallel test workers down many times over
test: $(STAMP) $(ML_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n 2 --dist loadfile --timeout 900

clean:
	rm -rf $(VENV) outputs build *.egg-info
