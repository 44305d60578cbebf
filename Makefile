# `make test` and `make demo` install what they need on a fresh Debian machine (as root): the FUSE
# packages, a virtualenv in .venv, and the exact, hashed set of packages in requirements/*.lock.txt.
# `make lock` refreshes those locks to current releases (README, "Development").
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
# systemd and rclone for tests only: systemd-analyze verifies the shipped unit; rclone reads the emulator.
APT_PKGS := fuse3 libfuse3-dev pkg-config systemd rclone
LOCKS := requirements
# The resolver that writes the locks, itself pinned: a new uv must not change what `make lock` means.
UV_VERSION := 0.13.9
UV_VENV := .lock-tools
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet \
	--custom-compile-command 'make lock'

.PHONY: deps test demo lint soak bench lock clean

deps: $(STAMP)

# Everything comes from the locks with --require-hashes, the installer and the build tools first, so no
# new release anywhere can change a fresh install. pyfuse3 ships only an sdist: it is built with
# --no-build-isolation against the pinned build tools instead of whatever an isolated build would fetch.
# The venv is made anew when a lock changes, so nothing stale survives an update.
$(STAMP): pyproject.toml $(LOCKS)/build.lock.txt $(LOCKS)/test.lock.txt
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PKGS) 2>/dev/null | grep -c 'install ok installed')" -lt $(words $(APT_PKGS)) ]; then \
	  echo "installing $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS); \
	fi
	$(PYTHON) -m venv --clear $(VENV)
	$(PIP) install -q --require-hashes --no-deps -r $(LOCKS)/build.lock.txt
	$(PIP) install -q --require-hashes --no-deps --no-build-isolation -r $(LOCKS)/test.lock.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

lint: deps
	$(PY) -m ruff check vfs tests bench mount.py
	$(PY) -m mypy vfs
	$(VENV)/bin/lint-imports --no-cache

# pytest's closing line ("N passed ...") is the last thing printed.
test: deps lint
	$(PY) -m pytest -q

soak: deps
	$(PY) -m pytest -q -m slow

demo: deps
	$(VENV)/bin/llava-vfs demo

# `make bench` also installs the peers it measures against (rclone from Debian; ratarmount, matplotlib
# from the bench lock, which holds the test lock's versions and more).
$(BENCH_STAMP): $(LOCKS)/bench.lock.txt $(STAMP)
	@if ! command -v rclone >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone; \
	fi
	$(PIP) install -q --require-hashes --no-deps --no-build-isolation -r $(LOCKS)/bench.lock.txt
	touch $(BENCH_STAMP)

bench: deps $(BENCH_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

# Resolve the newest releases that fit pyproject.toml's ranges. The bench lock is the superset and is
# resolved first; the test and build locks are resolved under it, so all three agree on every version.
lock:
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install -q uv==$(UV_VERSION)
	$(UV_VENV)/bin/uv pip compile pyproject.toml $(LOCKS)/build.in --extra test --extra bench \
	  $(LOCK_FLAGS) --upgrade -o $(LOCKS)/bench.lock.txt
	$(UV_VENV)/bin/uv pip compile pyproject.toml $(LOCKS)/build.in --extra test \
	  -c $(LOCKS)/bench.lock.txt $(LOCK_FLAGS) -o $(LOCKS)/test.lock.txt
	$(UV_VENV)/bin/uv pip compile $(LOCKS)/build.in -c $(LOCKS)/bench.lock.txt $(LOCK_FLAGS) -o $(LOCKS)/build.lock.txt

clean:
	rm -rf $(VENV) $(UV_VENV) build *.egg-info
