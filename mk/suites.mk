# mk/suites.mk: the suite matrix (bookworm, trixie, sid), included by the Makefile.
#
#   make images         .cache/SUITE-minbase (dir) and .cache/SUITE-minbase.tar for SUITES
#   make test-chroots   .cache/SUITE-test: minbase + the test dependencies + lintian
#   make suites         for each of SUITES: pytest inside SUITE-test, lintian inside it,
#                       autopkgtest (unshare --release SUITE), install/purge/upgrade check
#   make suite-SUITE    the same for one suite
#   make upgrade-test   Debian 12 -> 13 with virtdeb configured (mk/upgrade-test.sh)
#
# SUITES ?= bookworm trixie sid narrows it for local work; CI runs all three.
# The mirror is the one the machine's apt sources name (mk/mirror.sh); sid's Release
# file is past its Valid-Until date on it, so sid's images check no validity date.
# Nothing here changes the host outside .cache/, .build/ and temporary directories;
# every mount is made inside a private mount namespace (unshare -m) and goes with it.

SUITES ?= bookworm trixie sid
SUITE_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
SUITE_CACHE := $(SUITE_TOP)/.cache
SUITE_ENV := env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=$${HOME:-/root} LC_ALL=C.UTF-8 TMPDIR=$${TMPDIR:-/tmp}
suite_mirror = $(shell sh $(SUITE_TOP)/mk/mirror.sh $(1))
suite_aptopt = $(if $(filter sid unstable,$(1)),--aptopt='Acquire::Check-Valid-Until "false"')

# What the tree's pytest, lintian and the private libvirtd need inside a suite's chroot.
SUITE_TEST_DEPS := python3-augeas augeas-lenses augeas-tools python3-libvirt python3-debian python3-apt \
	python3-debconf python3-pytest python3-hypothesis libvirt-daemon-system libvirt-clients \
	qemu-system-x86 qemu-utils dnsmasq-base bridge-utils iptables nftables libcap2-bin attr \
	netcat-openbsd iproute2 adduser passwd debconf debconf-utils apt-listchanges polkitd \
	dbus-daemon dbus-bin util-linux mount lintian piuparts

.PHONY: images test-chroots suites suites-prep upgrade-test
# the chroots are kept (not intermediate files make may delete)
.PRECIOUS: $(SUITE_CACHE)/%-minbase/etc/os-release $(SUITE_CACHE)/%-test/etc/os-release

images: $(foreach s,$(SUITES),$(SUITE_CACHE)/$(s)-minbase.tar)
test-chroots: $(foreach s,$(SUITES),$(SUITE_CACHE)/$(s)-test/etc/os-release)

# A minbase image: services never start inside (policy-rc.d, written after
# mmdebstrap: its cleanup removes any policy-rc.d a hook writes).
$(SUITE_CACHE)/%-minbase/etc/os-release:
	mkdir -p $(SUITE_CACHE)
	rm -rf $(SUITE_CACHE)/$*-minbase.new
	$(SUITE_ENV) mmdebstrap --variant=minbase --mode=root $(call suite_aptopt,$*) \
		$* $(SUITE_CACHE)/$*-minbase.new "deb $(call suite_mirror,$*) $* main"
	printf '#!/bin/sh\n# virtdeb test image: never start services\nexit 101\n' \
		> $(SUITE_CACHE)/$*-minbase.new/usr/sbin/policy-rc.d
	chmod 755 $(SUITE_CACHE)/$*-minbase.new/usr/sbin/policy-rc.d
	rm -rf $(SUITE_CACHE)/$*-minbase && mv $(SUITE_CACHE)/$*-minbase.new $(SUITE_CACHE)/$*-minbase

$(SUITE_CACHE)/%-minbase.tar: $(SUITE_CACHE)/%-minbase/etc/os-release
	tar -C $(SUITE_CACHE)/$*-minbase --numeric-owner --xattrs -cf $@.new . && mv $@.new $@

# The test chroot: the same suite with the test dependencies (one apt run).
$(SUITE_CACHE)/%-test/etc/os-release:
	mkdir -p $(SUITE_CACHE)
	rm -rf $(SUITE_CACHE)/$*-test.new
	$(SUITE_ENV) mmdebstrap --variant=minbase --mode=root $(call suite_aptopt,$*) \
		--include='$(subst $(suite_space),$(comma),$(strip $(SUITE_TEST_DEPS)))' \
		--customize-hook='printf "#!/bin/sh\nexit 101\n" > "$$1/usr/sbin/policy-rc.d"; chmod 755 "$$1/usr/sbin/policy-rc.d"' \
		$* $(SUITE_CACHE)/$*-test.new "deb $(call suite_mirror,$*) $* main"
	printf '#!/bin/sh\n# virtdeb test image: never start services\nexit 101\n' \
		> $(SUITE_CACHE)/$*-test.new/usr/sbin/policy-rc.d
	chmod 755 $(SUITE_CACHE)/$*-test.new/usr/sbin/policy-rc.d
	rm -rf $(SUITE_CACHE)/$*-test && mv $(SUITE_CACHE)/$*-test.new $(SUITE_CACHE)/$*-test

comma := ,
suite_empty :=
suite_space := $(suite_empty) $(suite_empty)

# What every suite's checks share, built once: the .deb (and the older one with
# its local repository, for the upgrade tests), the source package lintian reads,
# the source tree autopkgtest reads.
suites-prep: package package-old
	rm -rf $(PKG_BUILD)/repo && mkdir -p $(PKG_BUILD)/repo
	cp $(PKG_PREV_DEB) $(PKG_BUILD)/repo/
	cd $(PKG_BUILD)/repo && $(SUITE_ENV) dpkg-scanpackages . /dev/null > Packages
	$(call pkg_copy_tree,$(PKG_BUILD)/lint/$(PKG_NAME))
	cd $(PKG_BUILD)/lint && $(SUITE_ENV) dpkg-source -b $(PKG_NAME)
	$(call pkg_copy_tree,$(PKG_BUILD)/autopkgtest-src/$(PKG_NAME))

# One suite: its image, its test chroot, then mk/suite-check.sh (pytest, lintian,
# autopkgtest, piuparts); every step runs, the suite fails if one did.
suite-%: suites-prep subids $(SUITE_CACHE)/%-minbase.tar $(SUITE_CACHE)/%-test/etc/os-release
	$(SUITE_ENV) sh $(SUITE_TOP)/mk/suite-check.sh $* $(call suite_mirror,$*)

# Every suite runs even if an earlier one failed; then the matrix fails if one did.
suites: suites-prep subids images test-chroots
	rc=0; for s in $(SUITES); do \
		$(SUITE_ENV) sh $(SUITE_TOP)/mk/suite-check.sh $$s $(call suite_mirror,$$s) || rc=1; \
	done; exit $$rc

# Debian 12 -> 13 with virtdeb configured, in a throwaway copy of the bookworm image.
upgrade-test: package $(SUITE_CACHE)/bookworm-minbase.tar
	$(SUITE_ENV) sh $(SUITE_TOP)/mk/upgrade-test.sh $(call suite_mirror,trixie)
