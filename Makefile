# radflow: `make run` starts the embedded stack, `make test` runs the suite.
# Both create .venv and install what they need; nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install lint system-deps lock bench bench-dicom bench-hl7-mapping bench-reporting clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "radflow needs Python >= 3.11 ($(PYTHON))"; exit 1; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# DICOM peer tools the tests use as independent witnesses (echoscu, findscu, storescu, ...), and
# Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium; never its own download)
system-deps:
	@command -v echoscu >/dev/null 2>&1 || { \
	  echo "installing dcmtk (Debian package)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dcmtk >/dev/null; }
	@[ -x /usr/bin/chromium ] || { \
	  echo "installing chromium and chromium-driver (Debian packages)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver >/dev/null; }

run: install
	$(VENV)/bin/radflow up

test: install system-deps
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; [ $$rc -eq 5 ] && { echo "no tests collected"; exit 1; }; exit $$rc

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/hl7_ingest.py

# HL7 engine: parse+map msgs/s (no I/O), outbound deliveries/s, message-browser search at 10^6
# logged messages (SQLite and PostgreSQL). `make bench-hl7-mapping ARGS=--quick` (~3 min)
bench-hl7-mapping: install
	$(PY) bench/hl7_mapping.py $(ARGS)

# radflow vs Orthanc (installed from Debian if missing), same DICOM workloads in one run; as root
# it runs in a private loopback-only network namespace. `make bench-dicom ARGS=--quick` (~2 min)
bench-dicom: install system-deps
	$(PY) bench/dicom.py $(ARGS)

# reporting: final signature -> ORU^R01 ACK from a local python-hl7 peer (p50/p95), 50 concurrent
# signings per round through the whole stack (`radflow up`). `make bench-reporting ARGS="--rounds 1"`
bench-reporting: install
	$(PY) bench/report_delivery.py $(ARGS)

lock: install
	{ echo "# Pinned versions for reproducible installs: pip install -c constraints.txt -e '.[dev]'"; \
	  echo "# Regenerate with: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^radflow'; } > constraints.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
