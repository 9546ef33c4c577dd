# mk/demo.mk: `make demo`, included by the Makefile.
#
#   make demo             the story of README.Debian, live, on Debian 13 trixie booted in
#                         systemd-nspawn (SUITE=bookworm or SUITE=sid for another) over a
#                         throwaway overlay of .cache/booted-SUITE (mk/booted.mk): systemd,
#                         socket-activated libvirtd, and a reboot after the microcode upgrade
#   make demo MODE=chroot the same story in a throwaway chroot of .cache/demo-SUITE, whose
#                         own libvirtd runs in private namespaces (no init, no reboot)
#   make demo-image       the chroot mode's image, cached in .cache/demo-SUITE
#
# Nothing here changes the host outside .build/, .cache/ and temporary directories,
# except the dependency step shared with `make check` (apt-get install).

DEMO_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
DEMO_SUITE := $(or $(SUITE),trixie)
DEMO_IMAGE := $(DEMO_TOP)/.cache/demo-$(DEMO_SUITE)
DEMO_ENV := env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=$${HOME:-/root} LC_ALL=C.UTF-8 TMPDIR=$${TMPDIR:-/tmp}
DEMO_MIRROR := $(shell sh $(DEMO_TOP)/mk/mirror.sh $(DEMO_SUITE))
# sid's Release file on the mirror is past its Valid-Until date
DEMO_APTOPT := $(if $(filter sid unstable,$(DEMO_SUITE)),--aptopt='Acquire::Check-Valid-Until "false"')
# What the story uses inside the chroot; dnsmasq (the daemon) is only downloaded:
# the story installs it later, from the chroot's apt cache.
DEMO_INCLUDE := libvirt-daemon-system,qemu-system-x86,python3-augeas,python3-libvirt,python3-debian,python3-debconf,augeas-lenses,libcap2-bin,netcat-openbsd,iproute2,dnsmasq-base,iptables,bridge-utils,passwd,adduser,debconf-utils,diffutils

.PHONY: demo demo-image

demo-image: $(DEMO_TOP)/.cache/demo-deps.stamp $(DEMO_IMAGE)/var/lib/dpkg/info/libvirt-daemon-system.list

$(DEMO_IMAGE)/var/lib/dpkg/info/libvirt-daemon-system.list:
	mkdir -p $(DEMO_TOP)/.cache
	rm -rf $(DEMO_IMAGE).new
	$(DEMO_ENV) mmdebstrap --variant=minbase --mode=root --skip=cleanup/apt \
		--aptopt='Apt::Install-Recommends "false"' $(DEMO_APTOPT) \
		--include=$(DEMO_INCLUDE) \
		--customize-hook='chroot "$$1" apt-get install -y -q --download-only dnsmasq' \
		--customize-hook='printf "#!/bin/sh\n# virtdeb demo: never start services\nexit 101\n" > "$$1/usr/sbin/policy-rc.d"; chmod 755 "$$1/usr/sbin/policy-rc.d"' \
		$(DEMO_SUITE) $(DEMO_IMAGE).new "deb $(DEMO_MIRROR) $(DEMO_SUITE) main"
	rm -rf $(DEMO_IMAGE) && mv $(DEMO_IMAGE).new $(DEMO_IMAGE)

# What the demo needs on the host, and only that (the full `make deps` of `make check`
# installs much more): the package build, mmdebstrap, systemd-nspawn, ip.
DEMO_DEPS := build-essential debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools po-debconf fakeroot dpkg-dev mmdebstrap debian-archive-keyring \
	systemd-container iproute2 util-linux git ca-certificates
$(DEMO_TOP)/.cache/demo-deps.stamp:
	mkdir -p $(DEMO_TOP)/.cache
	$(APT_GET) update
	$(APT_GET) install $(DEMO_DEPS)
	touch $@

# One command on a fresh machine: what the demo needs, the package, the image, then the
# story (tests/demo_story.py).
DEMO_MODE := $(or $(MODE),booted)
ifeq ($(DEMO_MODE),chroot)
demo: $(DEMO_TOP)/.cache/demo-deps.stamp package demo-image
	@echo "virtdeb demo: Debian $(DEMO_SUITE) chroot $(DEMO_IMAGE)"
	cd $(DEMO_TOP) && $(DEMO_ENV) PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m tests.demo_story \
		--image $(DEMO_IMAGE) --deb $(PKG_DEB)
else
demo: $(DEMO_TOP)/.cache/demo-deps.stamp package $(BOOTED_CACHE)/booted-$(DEMO_SUITE)/var/lib/dpkg/info/libvirt-daemon-system.list
	@echo "virtdeb demo: Debian $(DEMO_SUITE) booted in systemd-nspawn, from $(BOOTED_CACHE)/booted-$(DEMO_SUITE)"
	cd $(DEMO_TOP) && $(DEMO_ENV) PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m tests.demo_story \
		--booted --image $(BOOTED_CACHE)/booted-$(DEMO_SUITE) --deb $(PKG_DEB)
endif
