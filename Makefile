# virtdeb: `make demo` shows it working in a throwaway chroot; `make check` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE := 1
PY := /usr/bin/python3
LINTVENV := .cache/lint-venv
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends

# Everything the tests use, from Debian (the runtime is Debian's python3).
DEPS := python3-augeas augeas-lenses augeas-tools python3-libvirt python3-debian \
	python3-debconf python3-pytest python3-hypothesis python3-mypy python3-venv \
	libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base \
	bridge-utils iptables nftables libcap2-bin attr netcat-openbsd iproute2 adduser passwd debconf-utils \
	apt-listchanges ansible-core ansible-lint openssh-client

.PHONY: all deps lint unit test check check-full check-cpu demo bench clean
all: check

-include mk/*.mk

.cache/deps.stamp:
	mkdir -p .cache
	$(APT_GET) update
	$(APT_GET) install $(DEPS) $(PKG_DEPS)
	touch $@
deps: .cache/deps.stamp

$(LINTVENV)/bin/ruff:
	$(PY) -m venv $(LINTVENV)
	$(LINTVENV)/bin/pip install -q ruff==0.8.4

lint: deps $(LINTVENV)/bin/ruff
	$(LINTVENV)/bin/ruff check virtdeb tests bench hooks autopkgtest
	$(PY) -m mypy --strict --config-file setup.cfg virtdeb
	for t in virtdeb/lenses/tests/test_*.aug; do augparse -I virtdeb/lenses "$$t" || exit 1; done

# As root: every test on the host (apt-get installs what they need first). As another
# user: the tests marked neither integration nor root (setup.cfg), with what is installed.
IS_ROOT := $(filter 0,$(shell id -u))
unit: $(if $(IS_ROOT),deps)
	$(PY) -m pytest -q -p no:cacheprovider -ra $(if $(IS_ROOT),,-m "not integration and not root") tests

test: lint unit

# Everything, in this order: lint and types; the package (built once) and the images;
# for each of SUITES (bookworm trixie sid, mk/suites.mk) pytest (unit and integration)
# inside that suite's chroot, its lintian, autopkgtest and piuparts (the chroots let the
# apt tests run real apt with the built package); the booted story on each suite
# (mk/booted.mk: systemd as PID 1 in systemd-nspawn); the Ansible collection and the fleet
# (mk/fleet.mk); the 12 -> 13 upgrade.  Every step runs under mk/host-guard.sh, which
# fails the check if the host's /dev, users and groups, mounts, network namespaces or
# detached processes are not as they were before it.  `make unit` runs pytest on the host.
CHECK_STEPS := lint package image safety-image demo-image suites booted ansible-check fleet \
	upgrade-test
# Each step prints its time; the first that fails ends the run.
check:
	@guard=$$(mktemp); sh mk/host-guard.sh save "$$guard"; start=$$(date +%s); rc=0; \
	for step in $(CHECK_STEPS); do t=$$(date +%s); \
		$(MAKE) --no-print-directory $$step || rc=$$?; \
		echo "make check: $$step $$([ $$rc = 0 ] && echo done || echo FAILED)" \
			"in $$(( $$(date +%s) - t )) s"; [ $$rc = 0 ] || break; done; \
	sh mk/host-guard.sh compare "$$guard" || rc=1; rm -f "$$guard"; \
	echo "make check: $$([ $$rc = 0 ] && echo passed || echo FAILED)" \
		"in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"; exit $$rc
check-full: check

# The CPU tests against one CPU: CPU=host (this machine's), intel-haswell or amd-epyc
# (a private libvirtd given edited qemu capabilities: tests/harness/cpucaps.py), so
# that an engineer on either vendor sees the other's result.  `make check` runs all three.
CPU ?= intel-haswell
CPU_TESTS := tests/test_cpucheck.py tests/test_cpu_vendors.py tests/test_cpu_baseline_libvirtd.py
check-cpu: deps
	VIRTDEB_TEST_CPU=$(CPU) $(PY) -m pytest -q -p no:cacheprovider -ra $(CPU_TESTS)

clean:
	rm -rf .cache .build build *.egg-info .mypy_cache .pytest_cache
