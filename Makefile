# Two commands on a fresh machine (README): `make run` (the main job) and `make test` (the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# pinned for this project's machines: pip takes both from local disk (code also runs on torch 2.11)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/labelless run --dataset digits

# pytest-xdist: one worker a core, at most 4 (each holds up to ~2 GB); `pytest -q` runs the same tests in one process
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4
