# mk/booted.mk: booted Debian systems (systemd as PID 1 in systemd-nspawn), included
# by the Makefile.
#
#   make booted-images    .cache/booted-SUITE for each of BOOTED_SUITES: a root that
#                         boots (systemd, dbus, polkitd, libvirt-daemon-system, qemu and
#                         virtdeb's dependencies), a persistent journal (/var/log/journal),
#                         and dnsmasq only downloaded (the story installs it later: the
#                         booted system has a private network and reaches no mirror)
#   make booted           tests/test_booted.py: the booted story on each suite
#                         (tests/harness/booted.py boots a throwaway overlay of the image)
#   make booted-SUITE     the same for one suite
#
# The image is never changed by a boot (every boot runs on an overlay); virtdeb's .deb
# is copied into the overlay at test time, not into the image. Nothing here changes the
# host outside .cache/, .build/ and temporary directories, except the dependency step
# shared with `make check` (systemd-container for systemd-nspawn).

BOOTED_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
BOOTED_CACHE := $(BOOTED_TOP)/.cache
BOOTED_SUITES ?= bookworm trixie sid
BOOTED_ENV := env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=$${HOME:-/root} LC_ALL=C.UTF-8 TMPDIR=$${TMPDIR:-/tmp}
booted_mirror = $(shell sh $(BOOTED_TOP)/mk/mirror.sh $(1))
# sid's Release file on the mirror is past its Valid-Until date
booted_aptopt = $(if $(filter sid unstable,$(1)),--aptopt='Acquire::Check-Valid-Until "false"')
BOOTED_PKGS := systemd systemd-sysv dbus polkitd libvirt-daemon-system libvirt-clients \
	qemu-system-x86 python3-augeas python3-libvirt python3-debian python3-debconf augeas-lenses \
	debconf-utils netcat-openbsd iproute2 iptables dnsmasq-base bridge-utils libcap2-bin passwd \
	adduser util-linux procps diffutils autopkgtest
booted_empty :=
booted_space := $(booted_empty) $(booted_empty)
booted_comma := ,
BOOTED_INCLUDE := $(subst $(booted_space),$(booted_comma),$(strip $(BOOTED_PKGS)))

# systemd-nspawn, on the host (`make deps`)
DEPS += systemd-container

.PHONY: booted booted-images
.PRECIOUS: $(BOOTED_CACHE)/booted-%/var/lib/dpkg/info/libvirt-daemon-system.list

booted-images: $(foreach s,$(BOOTED_SUITES),$(BOOTED_CACHE)/booted-$(s)/var/lib/dpkg/info/libvirt-daemon-system.list)

# apt's lists and cache are kept (--skip=cleanup/apt) so that the booted system installs
# the downloaded dnsmasq offline; recommends stay off, as in the image build.
$(BOOTED_CACHE)/booted-%/var/lib/dpkg/info/libvirt-daemon-system.list:
	mkdir -p $(BOOTED_CACHE)
	rm -rf $(BOOTED_CACHE)/booted-$*.new
	$(BOOTED_ENV) mmdebstrap --variant=minbase --mode=root --skip=cleanup/apt \
		--aptopt='Apt::Install-Recommends "false"' $(call booted_aptopt,$*) \
		--include='$(BOOTED_INCLUDE)' \
		--customize-hook='chroot "$$1" apt-get install -y -q --download-only dnsmasq' \
		--customize-hook='mkdir -p "$$1/var/log/journal"' \
		$* $(BOOTED_CACHE)/booted-$*.new "deb $(call booted_mirror,$*) $* main"
	rm -rf $(BOOTED_CACHE)/booted-$* && mv $(BOOTED_CACHE)/booted-$*.new $(BOOTED_CACHE)/booted-$*

# pytest, then the per-suite reports (times, the boot unit's lines) it wrote
booted_pytest = cd $(BOOTED_TOP) && rm -rf .build/booted && rc=0; \
	$(BOOTED_ENV) VIRTDEB_BOOTED_SUITES='$(1)' VIRTDEB_BOOTED_DEB=$(PKG_DEB) \
		/usr/bin/python3 -m pytest -q -p no:cacheprovider -ra -m booted tests/test_booted.py \
		tests/test_demo_story.py \
		|| rc=$$?; cat .build/booted/*.txt 2>/dev/null; exit $$rc

booted-%: deps package $(BOOTED_CACHE)/booted-%/var/lib/dpkg/info/libvirt-daemon-system.list
	$(call booted_pytest,$*)

booted: deps package booted-images
	$(call booted_pytest,$(BOOTED_SUITES))

