# `make test` and `make demo` install what they need on a fresh Debian machine (as root):
# the FUSE packages, a virtualenv in .venv and the project with its test extras.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PKGS := fuse3 libfuse3-dev pkg-config

.PHONY: deps test demo lint soak bench clean

deps: $(STAMP)

$(STAMP): pyproject.toml
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PKGS) 2>/dev/null | grep -c 'install ok installed')" -lt 3 ]; then \
	  echo "installing $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS); \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: deps
	$(PY) -m ruff check vfs tests bench mount.py
	$(PY) -m mypy vfs

test: deps lint
	$(PY) -m pytest -q

soak: deps
	$(PY) -m pytest -q -m slow

demo: deps
	$(VENV)/bin/llava-vfs demo

# `make bench` also installs the peers it measures against (rclone from Debian; ratarmount, matplotlib from PyPI).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	@if ! command -v rclone >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone; \
	fi
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: deps $(BENCH_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
