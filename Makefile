# Civicflow: two commands for a new user, `make demo` and `make test`. `make help` lists the rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# The commands below start many Python processes (Airflow's DAG runs, listeners, uvicorn) that import
# Airflow and Great Expectations; let them keep compiled bytecode in .venv instead of compiling
# those packages again in every process when the environment says not to write it.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help install demo test test-unit lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Civicflow needs Python 3.11+, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned runtime dependencies (requirements.lock, hashed)

# Tests, linters, benchmarks and the screenshot add the test tools (requirements-test.lock: the
# runtime pins plus pytest, ruff, Playwright, Schemathesis, moto, ...); the runtime install never has them.
$(DEV_STAMP): $(STAMP) requirements-test.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-test.lock
	@touch $(DEV_STAMP)

demo: $(STAMP) ## replay car-park, bin, air-quality and traffic readings through MQTT, Airflow and the quality gate
	$(BIN)/civicflow demo

test: $(DEV_STAMP) ## run the whole test suite on every core (starts its own Mosquitto and Airflow metadata DB)
	$(BIN)/python -m pytest -n auto --dist loadfile

test-unit: $(DEV_STAMP) ## run only the fast unit tests
	$(BIN)/python -m pytest -m unit

.PHONY: wheel-demo
WHEEL_VENV := .venv-wheel
wheel-demo: $(STAMP) ## build the wheel, install it with requirements.lock into .venv-wheel and run its `civicflow demo` outside the checkout
	rm -rf dist $(WHEEL_VENV)
	$(BIN)/uv build --wheel --quiet -o dist
	rm -rf build
	$(BIN)/uv venv --quiet --python $(BIN)/python $(WHEEL_VENV)
	$(BIN)/uv pip install --quiet --python $(WHEEL_VENV)/bin/python --require-hashes -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(WHEEL_VENV)/bin/python --no-deps dist/civicflow-*.whl
	@dir="$$(mktemp -d)" && echo "civicflow demo in $$dir (outside the checkout)" && \
		cd "$$dir" && "$(CURDIR)/$(WHEEL_VENV)/bin/civicflow" demo

.PHONY: fuzz
fuzz: $(DEV_STAMP) ## fuzz ingestion end to end: 100,000 hostile messages through Mosquitto, the listener and civicflow batch (FUZZ_ARGS: --messages N --seed S)
	$(BIN)/python -m tests.fuzz $(FUZZ_ARGS)

.PHONY: bench bench-stage bench-scale bench-portal bench-publish
bench: $(DEV_STAMP) ## the benchmarks: backlog drain (BENCH_ARGS), staging (BENCH_STAGE_ARGS), staging on many workers (BENCH_SCALE_ARGS), portal API (BENCH_PORTAL_ARGS), publication (BENCH_PUBLISH_ARGS)
	$(BIN)/python -m bench.drain $(BENCH_ARGS)
	$(BIN)/python -m bench.stage $(BENCH_STAGE_ARGS)
	$(BIN)/python -m bench.scale $(BENCH_SCALE_ARGS)
	$(BIN)/python -m bench.portal $(BENCH_PORTAL_ARGS)
	$(BIN)/python -m bench.publish $(BENCH_PUBLISH_ARGS)

bench-stage: $(DEV_STAMP) ## stage 0.5-5 million raw readings vs DuckDB read_json -> Parquet
	$(BIN)/python -m bench.stage $(BENCH_STAGE_ARGS)

bench-scale: $(DEV_STAMP) ## staging with 1 and 2 workers on 1 million readings vs DuckDB read_json -> Parquet; the national projection
	$(BIN)/python -m bench.scale $(BENCH_SCALE_ARGS)

.PHONY: screenshot
screenshot: $(DEV_STAMP) ## publish the Birmingham car parks and Aberdeen stations, screenshot a dataset page and a device map (docs/images/)
	$(BIN)/python docs/screenshot.py

bench-portal: $(DEV_STAMP) ## civicflow serve over a year of 200 car parks: query latency vs DuckDB, 50 clients
	$(BIN)/python -m bench.portal $(BENCH_PORTAL_ARGS)

bench-publish: $(DEV_STAMP) ## gate and publish for 1, 10, 50 councils (7 days each): first publication, then one hour more
	$(BIN)/python -m bench.publish $(BENCH_PUBLISH_ARGS)

lint: $(DEV_STAMP) ## ruff format check and lint; import contracts (package layers, framework homes)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m tests.import_layout

lock: ## re-resolve requirements.lock (runtime) and requirements-test.lock (runtime + test tools) from pyproject.toml, with hashes
	$(BIN)/uv pip compile pyproject.toml --python 3.11 --generate-hashes -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra test --python 3.11 --generate-hashes -o requirements-test.lock

clean: ## remove generated data and the virtual environment
	rm -rf data $(VENV) $(WHEEL_VENV)
