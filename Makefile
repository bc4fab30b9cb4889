# Two entry points for a new user: `make demo` and `make test`.
# Each installs what it needs: Debian packages (when missing), a .venv, the project.
# On a robot: `sudo make install` (and `sudo make uninstall`), see README's "Using it on a robot".
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# espeak-ng, sox: the stand-ins' voices; openssl: TLS test certificates; libspeexdsp-dev: the echo
# canceller; portaudio19-dev: PyAudio; pulseaudio*, libasound2-plugins: a private sound server for
# the tests of the live audio path.
APT_PACKAGES := espeak-ng sox openssl libspeexdsp-dev portaudio19-dev pulseaudio pulseaudio-utils libasound2-plugins
# `make test` only: systemd-analyze (in the package systemd) checks the units. A Debian system has
# it; a Debian container image does not.
TEST_APT_PACKAGES := systemd
# What `make install` builds on a robot: PyAudio and the echo canceller.
ROBOT_APT_PACKAGES := libspeexdsp-dev portaudio19-dev
STAMP := $(VENV)/.installed
# apt-get waits for another apt or dpkg (unattended-upgrades) instead of failing at once.
APT_GET := apt-get -o DPkg::Lock::Timeout=600

# `make install`: where things land. DESTDIR stages everything under one directory (packaging):
# then no user is created and systemctl is not called.
DESTDIR ?=
PREFIX ?= /opt/moss-voice
CONFDIR ?= /etc/moss-voice
UNITDIR ?= /etc/systemd/system
USERUNITDIR ?= /etc/systemd/user
SERVICE_USER ?= moss-voice
EXTRAS ?= audio,aec
# no: skip the venv and pip (the install test, or a packager who builds the venv elsewhere).
INSTALL_VENV ?= yes
# The venv's Python: Debian's, because the unit's ProtectHome= hides a Python under /root or /home (pyenv).
INSTALL_PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,$(PYTHON))
# The source files `make install` copies to $(PREFIX)/src and installs from.
SOURCES := pyproject.toml README.md daemon states hardware systemd docs

.PHONY: demo test system-packages test-packages robot-packages venv clean install install-venv uninstall

demo: $(STAMP)
	$(BIN)/moss-voice demo

# Two workers, whole files each (a file's tests share module fixtures): most tests wait on
# real-time audio, so the suite takes some 6 minutes on 2 cores instead of 12.
test: $(STAMP) | test-packages
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# $(1): the Debian packages needed; installs the missing ones (and python3-venv, python3-dev, a compiler).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	command -v cc >/dev/null 2>&1 || missing="$$missing build-essential"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing (waits if another apt or dpkg is running)"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO $(APT_GET) update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	fi
endef

system-packages:
	$(call apt_install,$(APT_PACKAGES))

test-packages:
	$(call apt_install,$(TEST_APT_PACKAGES))

robot-packages:
	$(call apt_install,$(ROBOT_APT_PACKAGES))

$(STAMP): pyproject.toml | system-packages
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing moss-voice and its dependencies into $(VENV) (about a minute the first time)..."
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[stubs,aec,audio,bench,hotword,test]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info

# ---- install on a robot -------------------------------------------------------------------
# Needs root unless DESTDIR is set. Running it again upgrades in place: the code and venv are
# replaced, /etc/moss-voice/moss-voice.toml is never overwritten (the new example lands beside it
# as moss-voice.toml.example), and a running service is restarted.
# systemctl only when systemd runs here (overridable for the tests' dry runs) and never with DESTDIR.
SYSTEMD_RUNNING ?= $(wildcard /run/systemd/system)
SYSTEMD_RUNS = $(if $(DESTDIR),,$(SYSTEMD_RUNNING))

install:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path, got '$(PREFIX)'" >&2; exit 2;; esac
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make install needs root: sudo make install" >&2; exit 1; fi
ifeq ($(DESTDIR),)
	@$(MAKE) --no-print-directory robot-packages PYTHON=$(INSTALL_PYTHON)
	@if ! getent passwd $(SERVICE_USER) >/dev/null; then \
	  echo "creating the system user $(SERVICE_USER)"; \
	  useradd --system --user-group --home-dir /var/lib/$(SERVICE_USER) --no-create-home \
	    --shell /usr/sbin/nologin --comment "moss-voice robot voice" $(SERVICE_USER); \
	fi
	usermod -a -G audio $(SERVICE_USER)
	@if getent group gpio >/dev/null; then usermod -a -G gpio $(SERVICE_USER); \
	else echo "no gpio group on this board: $(SERVICE_USER) is in audio only"; fi
endif
	rm -rf '$(DESTDIR)$(PREFIX)/src'
	install -d -m 0755 '$(DESTDIR)$(PREFIX)/src'
	cp -R $(SOURCES) '$(DESTDIR)$(PREFIX)/src/'
	find '$(DESTDIR)$(PREFIX)/src' -name __pycache__ -prune -exec rm -rf {} +
	@if [ "$(INSTALL_VENV)" = yes ]; then $(MAKE) --no-print-directory install-venv; \
	else echo "INSTALL_VENV=$(INSTALL_VENV): no venv in $(DESTDIR)$(PREFIX)/.venv"; fi
	install -d -m 0755 '$(DESTDIR)$(CONFDIR)'
	install -m 0644 systemd/moss-voice.toml '$(DESTDIR)$(CONFDIR)/moss-voice.toml.example'
	@if [ -e '$(DESTDIR)$(CONFDIR)/moss-voice.toml' ]; then \
	  echo "kept $(CONFDIR)/moss-voice.toml; the new example is $(CONFDIR)/moss-voice.toml.example"; \
	else install -m 0644 systemd/moss-voice.toml '$(DESTDIR)$(CONFDIR)/moss-voice.toml'; \
	  echo "installed the example config as $(CONFDIR)/moss-voice.toml: edit it"; fi
	install -d -m 0755 '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(USERUNITDIR)'
	install -m 0644 systemd/moss-voice.service '$(DESTDIR)$(UNITDIR)/moss-voice.service'
	install -m 0644 systemd/moss-voice-user.service '$(DESTDIR)$(USERUNITDIR)/moss-voice-user.service'
ifneq ($(SYSTEMD_RUNS),)
	systemctl daemon-reload
	systemctl enable moss-voice
	systemctl try-restart moss-voice
	@echo "installed. Start it: systemctl start moss-voice; logs: journalctl -u moss-voice -f"
endif

# The venv at its final path: with DESTDIR it is built under $(DESTDIR)$(PREFIX) and the staging
# prefix is then cut out of its scripts (a venv records its own absolute path).
install-venv:
	test -x '$(DESTDIR)$(PREFIX)/.venv/bin/python' || $(INSTALL_PYTHON) -m venv '$(DESTDIR)$(PREFIX)/.venv'
	@echo "installing moss-voice[$(EXTRAS)] and its dependencies into $(PREFIX)/.venv (about a minute the first time)..."
	'$(DESTDIR)$(PREFIX)/.venv/bin/python' -m pip install -q --disable-pip-version-check '$(DESTDIR)$(PREFIX)/src[$(EXTRAS)]'
	'$(DESTDIR)$(PREFIX)/.venv/bin/python' -m pip install -q --disable-pip-version-check --no-deps --force-reinstall '$(DESTDIR)$(PREFIX)/src'
ifneq ($(DESTDIR),)
	grep -rlI -F '$(DESTDIR)$(PREFIX)' '$(DESTDIR)$(PREFIX)/.venv/bin' '$(DESTDIR)$(PREFIX)/.venv/pyvenv.cfg' \
	  | xargs -r sed -i 's|$(DESTDIR)$(PREFIX)|$(PREFIX)|g'
endif

# Removes the code and the units; keeps /etc/moss-voice (the config and secrets), /var/lib/moss-voice
# and the moss-voice user.
uninstall:
	@case "$(PREFIX)" in /?*) ;; *) echo "PREFIX must be an absolute path, got '$(PREFIX)'" >&2; exit 2;; esac
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then echo "make uninstall needs root: sudo make uninstall" >&2; exit 1; fi
ifneq ($(SYSTEMD_RUNS),)
	-systemctl disable --now moss-voice
endif
	rm -f '$(DESTDIR)$(UNITDIR)/moss-voice.service' '$(DESTDIR)$(USERUNITDIR)/moss-voice-user.service'
	rm -rf '$(DESTDIR)$(PREFIX)'
ifneq ($(SYSTEMD_RUNS),)
	systemctl daemon-reload
endif
	@echo "removed $(PREFIX) and the units; kept $(CONFDIR) (config, secrets), /var/lib/$(SERVICE_USER) and the user $(SERVICE_USER)"
