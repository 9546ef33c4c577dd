# virtdeb: `make demo` shows it working in a throwaway chroot; `make check` runs every test.
SHELL := /bin/bash
export PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PYTHONDONTWRITEBYTECODE := 1
PY := /usr/bin/python3
LINTVENV := .cache/lint-venv
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600 --no-install-recommends

# Everything the tests use, from Debian (the runtime is Debian's python3).
DEPS := python3-augeas augeas-lenses augeas-tools python3-libvirt python3-debian python3-apt \
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

# Everything, in four phases; each prints its time:
#   1. lint and types (after the dependency step, `make deps`);
#   2. the package, built once (and the older one, for the upgrade tests);
#   3. every image (chroots and roots under .cache/), CHECK_JOBS at a time;
#   4. the tests, CHECK_JOBS at a time (each one's output shown whole when it ends, and
#      every one runs even if another failed): for each of SUITES (bookworm trixie sid,
#      mk/suites.mk) pytest (unit and integration) inside that suite's chroot, its
#      lintian, autopkgtest and piuparts; the booted story on each suite (mk/booted.mk:
#      systemd as PID 1 in systemd-nspawn) and the booted demo; the Ansible collection
#      and the fleet (mk/fleet.mk); the 12 -> 13 upgrade.
# The tests of phase 4 share nothing but read-only images and the package: each has its
# own chroot or overlay, mount namespace and /run (network namespaces), and scratch dirs.
# The whole run is under mk/host-guard.sh, which fails the check if the host's /dev,
# users and groups, mounts, network namespaces or detached processes are not as they
# were before it.  `make unit` runs pytest on the host.
CHECK_JOBS ?= $(shell nproc)
CHECK_IMAGES := images test-chroots safety-image demo-image booted-images fleet-images
# the longest first (a suite about 9 minutes, booted 8, the fleet 4, the upgrade 2)
CHECK_TESTS := $(foreach s,$(SUITES),suite-$(s)) booted fleet upgrade-test ansible-check
# what phase 2 made is not made again in phase 4 (-o: the tests start at once)
CHECK_MADE := $(foreach t,deps package package-old suites-prep subids,-o $(t))
check:
	@guard=$$(mktemp); log=$$(mktemp); sh mk/host-guard.sh save "$$guard"; start=$$(date +%s); rc=0; \
	phase() { t=$$(date +%s); shift; $(MAKE) --no-print-directory "$$@" 2>&1 | tee -a "$$log"; \
		r=$${PIPESTATUS[0]}; [ $$r = 0 ] || rc=$$r; \
		echo "make check: $$name $$([ $$rc = 0 ] && echo done || echo FAILED)" \
			"in $$(( $$(date +%s) - t )) s"; }; \
	name=lint phase x lint; \
	[ $$rc = 0 ] && name=package phase x package package-old suites-prep subids; \
	[ $$rc = 0 ] && name=images phase x -j$(CHECK_JOBS) $(CHECK_IMAGES); \
	[ $$rc = 0 ] && name=tests phase x -j$(CHECK_JOBS) -O --keep-going $(CHECK_MADE) $(CHECK_TESTS); \
	sh mk/host-guard.sh compare "$$guard" || rc=1; rm -f "$$guard"; \
	[ $$rc = 0 ] || { echo "make check: what failed (each test's whole output is above):"; \
		grep -E "$(CHECK_FAILED_LINES)" "$$log" | head -n 40 | sed 's/^/  /'; }; rm -f "$$log"; \
	echo "make check: $$([ $$rc = 0 ] && echo passed || echo FAILED)" \
		"in $$(( ($$(date +%s) - start) / 60 )) min $$(( ($$(date +%s) - start) % 60 )) s"; exit $$rc
# the lines of a failure, repeated at the end of make check: pytest's failed tests (also
# inside a suite's step log), a suite step's and a suite's FAIL line, autopkgtest's
# summary, the upgrade test's FAIL lines, make's errors
CHECK_FAILED_LINES := (^|\| )(FAILED|ERROR) [^ ]+::|^[a-z]+ [a-z-]+: FAIL \(|: FAILED:|\| [a-z0-9_-]+ +FAIL |^FAIL: |^make(\[[0-9]+\])?: \*\*\*
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
