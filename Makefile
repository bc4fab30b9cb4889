# Two entry points for a new user: `make demo` and `make test`.
# Each installs what it needs: Debian packages (when missing), a .venv, the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# espeak-ng, sox: the stand-ins' voices; openssl: TLS test certificates; libspeexdsp-dev: the echo
# canceller; portaudio19-dev: PyAudio; pulseaudio*, libasound2-plugins: a private sound server for
# the tests of the live audio path.
APT_PACKAGES := espeak-ng sox openssl libspeexdsp-dev portaudio19-dev pulseaudio pulseaudio-utils libasound2-plugins
STAMP := $(VENV)/.installed

.PHONY: demo test system-packages venv clean

demo: $(STAMP)
	$(BIN)/moss-voice demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[stubs,aec,audio,bench,hotword,test]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
