# mk/package.mk: Debian packaging targets of virtdeb, included by the Makefile.
#
#   make deps-package   apt-get install what the targets below need
#   make package        build the .deb (binary only) into .build/
#   make lintian        lint source and binary, fail on errors and warnings
#   make image          bookworm minbase chroot (dir + tar) cached in .cache/
#   make autopkgtest    debian/tests/control in a throwaway unshare container
#   make piuparts       install/purge and upgrade-from-older-version tests
#   (make demo: mk/demo.mk)
#
# Nothing here changes the host outside .build/, .cache/ and temporary
# directories, except `deps-package` (apt-get install) and `subids` (one
# guarded line in /etc/subuid and /etc/subgid, needed by the unshare runner).

PKG_SHELL_PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# A clean environment: the pyenv python3 first on PATH must never be used.
PKG_ENV := env -i PATH=$(PKG_SHELL_PATH) HOME=$${HOME:-/root} LC_ALL=C.UTF-8 \
	TMPDIR=$${TMPDIR:-/tmp} DEB_BUILD_OPTIONS="$${DEB_BUILD_OPTIONS:-}"

PKG_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
PKG_BUILD := $(PKG_TOP)/.build
PKG_CACHE := $(PKG_TOP)/.cache
PKG_SUITE := bookworm
PKG_NAME := virtdeb
# read with sed, not dpkg-parsechangelog: on a fresh machine dpkg-dev comes only with `deps`
PKG_VERSION := $(shell sed -n "1s/^[^(]*(\([^)]*\)).*/\1/p" $(PKG_TOP)/debian/changelog)
PKG_DEB := $(PKG_BUILD)/$(PKG_NAME)_$(PKG_VERSION)_all.deb
# the version piuparts upgrades from (built from this tree, or PKG_PREV_DEB=...)
PKG_OLD_VERSION ?= 0.0.9
PKG_PREV_DEB ?= $(PKG_BUILD)/old/$(PKG_NAME)_$(PKG_OLD_VERSION)_all.deb

PKG_IMAGE_DIR := $(PKG_CACHE)/$(PKG_SUITE)-minbase
PKG_IMAGE_TAR := $(PKG_CACHE)/$(PKG_SUITE)-minbase.tar

# The Debian mirror the machine's apt sources name for $(PKG_SUITE);
# non-Debian sources are ignored.  Read at run time.
PKG_MIRROR := $(shell sh $(PKG_TOP)/mk/mirror.sh $(PKG_SUITE))

PKG_DEPS := build-essential debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools po-debconf fakeroot dpkg-dev lintian man-db autopkgtest \
	piuparts mmdebstrap uidmap debian-archive-keyring git ca-certificates

.PHONY: deps-package package package-old lintian image subids autopkgtest piuparts \
	clean-package

deps-package:
	$(PKG_ENV) DEBIAN_FRONTEND=noninteractive apt-get update
	$(PKG_ENV) DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		$(PKG_DEPS)

# Build in a copy of the tree (tracked and untracked-but-not-ignored files),
# so that the work tree is never touched and dpkg-buildpackage's output lands
# in .build/, not in the parent directory.
define pkg_copy_tree
	rm -rf $(1) && mkdir -p $(1)
	cd $(PKG_TOP) && git ls-files -z --cached --others --exclude-standard \
		| xargs -0 sh -c 'for f; do [ -e "$$f" ] || [ -L "$$f" ] && printf "%s\0" "$$f"; done' sh \
		| tar --null -T - -cf - | tar -C $(1) -xf -
endef

package:
	mkdir -p $(PKG_BUILD)
	$(call pkg_copy_tree,$(PKG_BUILD)/src/$(PKG_NAME))
	cd $(PKG_BUILD)/src/$(PKG_NAME) && $(PKG_ENV) dpkg-buildpackage -us -uc -b
	cp $(PKG_BUILD)/src/$(PKG_NAME)_$(PKG_VERSION)_all.deb \
	   $(PKG_BUILD)/src/$(PKG_NAME)_$(PKG_VERSION)_*.changes \
	   $(PKG_BUILD)/src/$(PKG_NAME)_$(PKG_VERSION)_*.buildinfo $(PKG_BUILD)/
	@echo "built $(PKG_DEB)"

# The same tree as version $(PKG_OLD_VERSION), for the upgrade test.
package-old:
	mkdir -p $(PKG_BUILD)/old
	$(call pkg_copy_tree,$(PKG_BUILD)/old/src/$(PKG_NAME))
	cd $(PKG_BUILD)/old/src/$(PKG_NAME) && \
		sed -i '1s/^$(PKG_NAME) ([^)]*)/$(PKG_NAME) ($(PKG_OLD_VERSION))/' debian/changelog && \
		sed -i 's/^__version__ = .*/__version__ = "$(PKG_OLD_VERSION)"/' $(PKG_NAME)/__init__.py && \
		$(PKG_ENV) dpkg-buildpackage -us -uc -b
	cp $(PKG_BUILD)/old/src/$(PKG_NAME)_$(PKG_OLD_VERSION)_all.deb $(PKG_BUILD)/old/

lintian: package
	$(call pkg_copy_tree,$(PKG_BUILD)/lint/$(PKG_NAME))
	cd $(PKG_BUILD)/lint && $(PKG_ENV) dpkg-source -b $(PKG_NAME)
	$(PKG_ENV) lintian --fail-on error,warning --info --display-info \
		$(PKG_BUILD)/lint/$(PKG_NAME)_$(PKG_VERSION).dsc $(PKG_DEB)

# One bookworm minbase image per run (and across runs): a directory for chroots
# and piuparts, and a tar of it for autopkgtest-virt-unshare.  Services never
# start inside (policy-rc.d).  Delete .cache/ to rebuild.
image: $(PKG_IMAGE_TAR)

# (the rules that build it are suites.mk's, the same for every suite)

# autopkgtest-virt-unshare maps root to 100000..165535: it needs these lines.
subids:
	@for f in /etc/subuid /etc/subgid; do \
		grep -q '^root:' $$f 2>/dev/null || { echo "adding root:100000:65536 to $$f"; \
			echo 'root:100000:65536' >> $$f; }; done

# autopkgtest 5.28 has autopkgtest-virt-unshare: a throwaway container per
# run, unpacked from the cached tarball; nothing of the host is touched.
autopkgtest: package image subids
	test -x /usr/bin/autopkgtest-virt-unshare
	$(call pkg_copy_tree,$(PKG_BUILD)/autopkgtest-src/$(PKG_NAME))
	rm -rf $(PKG_BUILD)/autopkgtest-out
	$(PKG_ENV) autopkgtest --output-dir $(PKG_BUILD)/autopkgtest-out \
		--setup-commands='apt-get update' \
		$(PKG_DEB) $(PKG_BUILD)/autopkgtest-src/$(PKG_NAME)/ \
		-- unshare --release $(PKG_SUITE) --tarball $(PKG_IMAGE_TAR)

# install/purge of this version, then install of the older version from a
# local repository, upgrade to this one, purge.
piuparts: package package-old image
	rm -rf $(PKG_BUILD)/repo && mkdir -p $(PKG_BUILD)/repo
	cp $(PKG_PREV_DEB) $(PKG_BUILD)/repo/
	cd $(PKG_BUILD)/repo && $(PKG_ENV) dpkg-scanpackages . /dev/null > Packages
	$(PKG_ENV) piuparts --no-eatmydata --existing-chroot=$(PKG_IMAGE_DIR) \
		-d $(PKG_SUITE) -m $(PKG_MIRROR) --no-upgrade-test $(PKG_DEB)
	$(PKG_ENV) piuparts --no-eatmydata --existing-chroot=$(PKG_IMAGE_DIR) \
		-d $(PKG_SUITE) -m $(PKG_MIRROR) --bindmount=$(PKG_BUILD)/repo \
		--extra-repo='deb [trusted=yes] file://$(PKG_BUILD)/repo ./' \
		--no-install-purge-test $(PKG_DEB)

clean-package:
	rm -rf $(PKG_BUILD)
