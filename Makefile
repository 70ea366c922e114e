# ovms-graph developer entry points. Every target installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FIXTURES_VENV ?= .venv-fixtures
CONVERT_VENV ?= .venv-convert
HOST ?= 127.0.0.1
PORT ?= 8000
CONFIG ?= graphs/demo/config.json

.PHONY: install system-deps test test-convert lint proto proto-check run fixtures tiny-models demo-model fixtures-env bench bench-model clean

install: $(VENV)/.installed

# The example plugin is installed like any third-party calculator package, and its tests run with ours.
$(VENV)/.installed: pyproject.toml examples/prompt_guard_plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev,fast]"
	$(PY) -m pip install -q --no-build-isolation -e examples/prompt_guard_plugin
	touch $@

# Programs the tests run besides Python (haproxy for tests/scaleout), from Debian's packages via apt-get.
system-deps:
	sh tools/install_system_deps.sh

lint: install
	$(VENV)/bin/ruff check $(wildcard ovms_graph calculators tests tools bench examples)
	$(VENV)/bin/mypy ovms_graph
	cd examples/prompt_guard_plugin && MYPYPATH=$(CURDIR) $(CURDIR)/$(VENV)/bin/mypy src tests gen_proto.py

test: install system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider tests examples/prompt_guard_plugin/tests

proto: install
	$(PY) tools/gen_protos.py

proto-check: install
	$(PY) tools/gen_protos.py --check

run: install
	$(VENV)/bin/ovms-graph serve --config_path $(CONFIG) --rest_port $(PORT) --rest_bind_address $(HOST)

# Conversion of non-OpenVINO models needs optimum-intel, which caps huggingface_hub below the
# runtime's, so it gets its own environment. The pins keep pip's resolver from wandering for minutes.
$(CONVERT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CONVERT_VENV)
	$(CONVERT_VENV)/bin/python -m pip install -q -U pip
	$(CONVERT_VENV)/bin/python -m pip install -q -e ".[dev,convert]" "optimum-intel==2.2.0" \
		"transformers>=4.51,<5.6" "huggingface_hub>=0.30,<1.22" diffusers "torch==2.13.0"
	$(CONVERT_VENV)/bin/python -m pip uninstall -y -q torchvision
	touch $@

test-convert: $(CONVERT_VENV)/.installed
	OVMS_GRAPH_CONVERT_TESTS=1 $(CONVERT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/convert

fixtures-env: $(FIXTURES_VENV)/.installed

$(FIXTURES_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FIXTURES_VENV)
	$(FIXTURES_VENV)/bin/python -m pip install -q -e ".[fixtures]"
	touch $@

# Rebuild the committed models: the tiny random ones (minutes) and the trained demo model (about an
# hour of CPU; the step budget below is the one recorded in models/demo/MANIFEST.json).
fixtures: tiny-models demo-model

tiny-models: fixtures-env
	bash tools/build_fixtures.sh $(FIXTURES_VENV)/bin/python

demo-model: fixtures-env
	$(FIXTURES_VENV)/bin/python -u tools/train_demo_model.py --vae-steps 3000 --unet-steps 5000 \
		--lora-steps 1500 --eval-every 1250

# The full-size benchmark model (SD1.5 shapes, random fp16 weights, about 2 GB) is built under build/,
# never committed, and only when missing (delete the folder to rebuild). The tests never need it.
BENCH_MODEL ?= build/bench-models/sd15

bench-model: $(BENCH_MODEL)/MANIFEST.json

$(BENCH_MODEL)/MANIFEST.json:
	$(MAKE) fixtures-env
	nice -n 10 $(FIXTURES_VENV)/bin/python -u tools/build_bench_model.py --out $(BENCH_MODEL)

bench: install
	$(PY) bench/bench_image_gen.py
	$(PY) bench/bench_lora.py
	$(PY) bench/bench_soak.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
