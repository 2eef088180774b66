# covidct-triton: one Makefile behind the README's two commands.
#   make demo   set up a fresh machine and run the main job on the built-in demo
#   make test   set up (if needed) and run the test suite
PYTHON_BOOTSTRAP ?= python3
VENV            ?= .venv
PY              := $(VENV)/bin/python
PIP             := $(VENV)/bin/pip
TRITON_DIR      ?= .triton
PYTRITON_WHEEL  ?= nvidia-pytriton==0.7.0
# The Python-backend stub of Triton 2.51 returns empty output tensors with numpy 2;
# the stub gets numpy 1.26 from a site of its own (see docs in README, "Serving").
STUB_NUMPY      ?= numpy==1.26.4
SHARED_DATA     ?= $(abspath ../shared/data/covid-ct-md)
PYTEST_ARGS     ?=
# perf_analyzer: the real binary ships inside the tritonclient 2.50.0 wheel (2.60+ needs glibc 2.38);
# it runs with the libb64/libcudart that nvidia-pytriton already bundles (symlinked, no apt, no CUDA).
PERF_WHEEL      ?= tritonclient==2.50.0
PERF_DIR        := $(TRITON_DIR)/perf_analyzer

.PHONY: setup pacs-tools demo test test-unit test-integration lint bench clean gpu-bundle

$(VENV)/.installed: pyproject.toml
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[serve,train,dev]"
	touch $@

$(TRITON_DIR)/.installed: $(VENV)/.installed
	$(PIP) install -q --no-deps --target $(TRITON_DIR) $(PYTRITON_WHEEL)
	$(PIP) install -q --no-deps --target $(TRITON_DIR)/stub-site $(STUB_NUMPY)
	touch $@

$(PERF_DIR)/.installed: $(TRITON_DIR)/.installed
	rm -rf $(PERF_DIR) && mkdir -p $(PERF_DIR)/bin $(PERF_DIR)/lib $(PERF_DIR)/wheel
	$(PIP) download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 -d $(PERF_DIR)/wheel $(PERF_WHEEL)
	cd $(PERF_DIR) && $(abspath $(PY)) -c "import zipfile,glob,shutil; z=zipfile.ZipFile(glob.glob('wheel/*.whl')[0]); n=[m for m in z.namelist() if m.endswith('/bin/perf_analyzer')][0]; shutil.copyfileobj(z.open(n), open('bin/perf_analyzer','wb'))"
	chmod +x $(PERF_DIR)/bin/perf_analyzer && rm -rf $(PERF_DIR)/wheel
	ln -sf $(abspath $(TRITON_DIR))/nvidia_pytriton.libs/libb64-*.so.0d $(PERF_DIR)/lib/libb64.so.0d
	ln -sf $(abspath $(TRITON_DIR))/nvidia_pytriton.libs/libcudart-*.so.12* $(PERF_DIR)/lib/libcudart.so.12
	touch $@

# PACS tests: Orthanc with its DICOMweb plugin and dciodvfy (Debian packages, installed as root).
# A failure does not fail setup; the PACS tests then skip with the reason.
DEB_PACKAGES    ?= orthanc orthanc-dicomweb dicom3tools

pacs-tools:
	@command -v Orthanc >/dev/null && command -v dciodvfy >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	  || ( [ "$$(id -u)" = 0 ] && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES) ) \
	  || echo "make setup: $(DEB_PACKAGES) not installed (needs root and apt); the PACS tests will skip"

setup: $(VENV)/.installed $(TRITON_DIR)/.installed $(PERF_DIR)/.installed pacs-tools

demo: setup
	COVIDCT_DATA_DIR=$${COVIDCT_DATA_DIR:-$(wildcard $(SHARED_DATA))} $(PY) -m covidct demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: setup lint
	COVIDCT_DATA_DIR=$${COVIDCT_DATA_DIR:-$(wildcard $(SHARED_DATA))} $(PY) -m pytest tests $(PYTEST_ARGS)

test-unit: setup
	COVIDCT_DATA_DIR=$${COVIDCT_DATA_DIR:-$(wildcard $(SHARED_DATA))} $(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# The GPU machine's bundle (no network there; run after `make setup`): Triton server, stub numpy,
# client packages, stripped, with a manifest; fails when bundle + working tree exceed 64 MiB.
# Then, on the GPU machine with the bundle folder carried along: bash benchmarks/gpu_check.sh OUTDIR
GPU_BUNDLE      ?= gpu_bundle
GPU_PYTHON      ?= 3.12

gpu-bundle:
	$(PY) -m covidct.benchmarks.gpu_bundle --out $(GPU_BUNDLE) --python-version $(GPU_PYTHON)

clean:
	rm -rf $(VENV) $(TRITON_DIR) .pytest_cache
