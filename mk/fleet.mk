# mk/fleet.mk: the Ansible collection and the multi-host fleet test, included by the Makefile.
#
#   make ansible-check  ansible-lint (production profile, offline), ansible-galaxy
#                       collection build + install into a scratch collections path,
#                       ansible-playbook --syntax-check of every example playbook
#   make fleet-images   bookworm and trixie roots for the fleet test's hosts
#                       (.cache/fleet-SUITE: libvirt, qemu, sshd, python3-apt and
#                       virtdeb's dependencies; virtdeb itself is installed by the role)
#   make fleet          tests/test_fleet.py on the host (part of make check; never skips): three
#                       hosts (network namespaces on a private bridge, overlay roots, own
#                       sshd + libvirtd), the role over real SSH, facts, cpu-baseline over
#                       qemu+ssh://
#
# Nothing here changes the host outside .cache/, .build/, temporary directories and the
# test's own network and mount namespaces, which it removes.

FLEET_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
FLEET_ENV := env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	HOME=$${HOME:-/root} LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
FLEET_SUITES := bookworm trixie
FLEET_PKGS := libvirt-daemon-system,dnsmasq-base,bridge-utils,iptables,libvirt-clients,qemu-system-x86,openssh-server,python3,python3-apt,netcat-openbsd,augeas-lenses,python3-augeas,python3-debconf,python3-debian,python3-libvirt,debconf-utils
FLEET_PKGS_trixie := ,libvirt-daemon-driver-qemu
FLEET_BUILD := $(FLEET_TOP)/.build/ansible
# ansible-galaxy and ansible-lint keep their caches and temporary files in .build/
FLEET_ANSIBLE_ENV := $(FLEET_ENV) HOME=$(FLEET_BUILD)/home XDG_CACHE_HOME=$(FLEET_BUILD)/cache \
	ANSIBLE_LOCAL_TEMP=$(FLEET_BUILD)/tmp ANSIBLE_COLLECTIONS_PATH=$(FLEET_BUILD)/collections

.PHONY: ansible-check fleet-images fleet

# tests/test_fleet.py runs on the host in `make fleet` (the Makefile's CHECK_STEPS,
# after the suites); in `make unit` it skips (no images there, and `make unit` builds none).

# The collection is built, installed into a scratch collections path, and the playbooks
# and ansible-lint resolve the role and module from there (as an admin's install would).
ansible-check: deps
	rm -rf $(FLEET_BUILD) && mkdir -p $(FLEET_BUILD)/collections $(FLEET_BUILD)/home
	cd $(FLEET_TOP)/ansible && $(FLEET_ANSIBLE_ENV) \
		ansible-galaxy collection build --output-path $(FLEET_BUILD) .
	$(FLEET_ANSIBLE_ENV) ansible-galaxy collection install --offline \
		-p $(FLEET_BUILD)/collections $(FLEET_BUILD)/virtdeb-libvirt_host-*.tar.gz
	test -f $(FLEET_BUILD)/collections/ansible_collections/virtdeb/libvirt_host/plugins/modules/virtdeb_apply.py
	cd $(FLEET_TOP)/ansible && for p in playbooks/*.yml; do $(FLEET_ANSIBLE_ENV) \
		ansible-playbook -i playbooks/inventory.example.ini --syntax-check "$$p" || exit 1; done
	cd $(FLEET_TOP)/ansible && $(FLEET_ANSIBLE_ENV) ansible-lint --offline --profile production

fleet-images: $(foreach s,$(FLEET_SUITES),$(FLEET_TOP)/.cache/fleet-$(s)/etc/ssh/sshd_config)

$(FLEET_TOP)/.cache/fleet-%/etc/ssh/sshd_config:
	mkdir -p $(FLEET_TOP)/.cache
	rm -rf $(FLEET_TOP)/.cache/fleet-$*.new
	$(FLEET_ENV) mmdebstrap --variant=minbase --mode=root \
		--include=$(FLEET_PKGS)$(FLEET_PKGS_$*) \
		--customize-hook='printf "#!/bin/sh\nexit 101\n" > "$$1/usr/sbin/policy-rc.d"; chmod 755 "$$1/usr/sbin/policy-rc.d"' \
		--customize-hook='rm -f "$$1"/etc/ssh/ssh_host_*' \
		$* $(FLEET_TOP)/.cache/fleet-$*.new "deb $(shell sh $(FLEET_TOP)/mk/mirror.sh $*) $* main"
	rm -rf $(FLEET_TOP)/.cache/fleet-$* && mv $(FLEET_TOP)/.cache/fleet-$*.new $(FLEET_TOP)/.cache/fleet-$*

# On the host (the suites' chroots have no ansible): the fleet must run, never skip.
fleet: deps package fleet-images
	cd $(FLEET_TOP) && $(FLEET_ENV) VIRTDEB_FLEET_REQUIRED=1 /usr/bin/python3 -m pytest -q \
		-p no:cacheprovider -ra tests/test_fleet.py
