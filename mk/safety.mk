# mk/safety.mk: the proof of safety and speed, included by the Makefile.
#
#   make check         runs the fast subsets of tests/test_faults.py,
#                      tests/test_faults_effects.py (libvirt network and
#                      capability), tests/test_faults_concurrent.py (3 seeded
#                      rounds of concurrent processes) and tests/test_hostile.py
#                      (they are part of tests/)
#   make check-full    the same suites in full (FULL=1: every fault point,
#                      every garbage kind, more hypothesis examples, 24
#                      concurrent rounds) and the
#                      apt robustness cases in a bookworm chroot
#   make bench         bench/run_all.py: doctor, postinst, apt hook, each
#                      printed as a ratio against an anchor of the same run
#   make safety-image  bookworm chroot with libvirt-daemon-system and virtdeb
#                      installed (.cache/bookworm-libvirt), for bench/postinst.py
#
# Nothing here changes the host outside .cache/, .build/ and temporary
# directories; the fault and apt suites run in private mount namespaces.

SAFETY_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
SAFETY_IMAGE := $(SAFETY_TOP)/.cache/bookworm-libvirt
SAFETY_ENV := env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=$${HOME:-/root} LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
SAFETY_TESTS := tests/test_faults.py tests/test_faults_effects.py tests/test_faults_concurrent.py \
	tests/test_lock.py tests/test_lock_dpkg.py tests/test_hostile.py tests/test_permissions.py \
	tests/test_apt_robustness.py

.PHONY: safety-full safety-image

check-full: safety-full

safety-full: deps
	cd $(SAFETY_TOP) && $(SAFETY_ENV) FULL=1 /usr/bin/python3 -m pytest -q -p no:cacheprovider \
		$(SAFETY_TESTS)

bench: deps
	cd $(SAFETY_TOP) && $(SAFETY_ENV) /usr/bin/python3 bench/run_all.py

# libvirt-daemon-system and virtdeb's own .deb in a throwaway bookworm chroot:
# its postinst is the anchor of bench/postinst.py.  Delete it to rebuild.
safety-image: $(SAFETY_IMAGE)/var/lib/dpkg/info/libvirt-daemon-system.postinst

$(SAFETY_IMAGE)/var/lib/dpkg/info/libvirt-daemon-system.postinst:
	test -f $(PKG_DEB) || $(MAKE) -C $(SAFETY_TOP) package
	rm -rf $(SAFETY_IMAGE).new
	$(SAFETY_ENV) mmdebstrap --variant=minbase --mode=root \
		--include=libvirt-daemon-system,python3-augeas,python3-libvirt,python3-debian,python3-debconf,augeas-lenses,netcat-openbsd \
		--customize-hook='printf "#!/bin/sh\nexit 101\n" > "$$1/usr/sbin/policy-rc.d"; chmod 755 "$$1/usr/sbin/policy-rc.d"' \
		--customize-hook='copy-in $(PKG_DEB) /tmp' \
		--customize-hook='chroot "$$1" env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/$(notdir $(PKG_DEB))' \
		bookworm $(SAFETY_IMAGE).new "deb $(PKG_MIRROR) bookworm main"
	rm -rf $(SAFETY_IMAGE) && mv $(SAFETY_IMAGE).new $(SAFETY_IMAGE)
