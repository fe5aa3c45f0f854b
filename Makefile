# Set-up and the two entry points: `make demo` (a lab deployed and proven) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the controller needs (the venv; the lab: hosts, DNS, ACME, package proxy, scans),
# by names valid on Debian 12 and 13.
APT_PACKAGES := python3-venv systemd-container mmdebstrap dnsmasq-base pebble tinyproxy-bin zstd nmap openssh-client iproute2

.PHONY: demo test unit lab-up lab-down lab-status system-deps

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/federate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: system-deps $(BIN)/federate
	$(BIN)/federate lab up
	$(BIN)/pyinfra .lab/inventory.py deploy.py -y
	$(BIN)/federate prove
	$(BIN)/federate verify .lab/inventory.py
	@echo
	@echo "The lab is still running: 'make lab-status' shows it, 'make lab-down' removes it."

# The test groups (labs shared by several suites, lone lab suites, unit tests) run two at a time,
# each in its own pytest process with its own labs: tests/run_suites.py.
test: system-deps $(BIN)/federate
	$(BIN)/python tests/run_suites.py --jobs 2 -v -ra --durations=15

unit: $(BIN)/federate
	$(BIN)/pytest -q tests/unit

lab-up: system-deps $(BIN)/federate
	$(BIN)/federate lab up

lab-status: $(BIN)/federate
	$(BIN)/federate lab status

lab-down: $(BIN)/federate
	$(BIN)/federate lab down
