#!/bin/sh
# make demo: install virtdeb into a throwaway bookworm chroot together with
# libvirt-daemon-system; show `virtdeb doctor` before and after the install's
# configuration step, and the diff of /etc the install made.
# Never touches the host: a copy of the cached image, /proc mounted in a
# private mount namespace only, services kept from starting by policy-rc.d.
set -eu
IMAGE=$1
DEB=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
W=$(mktemp -d "${TMPDIR:-/tmp}/virtdeb-demo.XXXXXX")
cleanup() { rm -rf --one-file-system "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

R=$W/root
cp -a "$IMAGE/." "$R"
cp /etc/resolv.conf "$R/etc/resolv.conf"
cp "$DEB" "$R/tmp/virtdeb.deb"
test -x "$R/usr/sbin/policy-rc.d"

# run CMD... inside the chroot, with /proc, in a private mount namespace
run() {
    unshare --mount --propagation private -- sh -c \
        'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' "$R" \
        env -i PATH="$PATH" LC_ALL=C.UTF-8 HOME=/root DEBIAN_FRONTEND=noninteractive "$@"
}
say() { printf '\n\033[1m### %s\033[0m\n' "$*"; }

say "installing libvirt-daemon-system and virtdeb's dependencies"
run apt-get update -q
run apt-get install -y -q --no-install-recommends libvirt-daemon-system libcap2-bin \
    qemu-system-common python3-augeas python3-libvirt python3-debian python3-debconf \
    augeas-lenses >/dev/null
run useradd --no-create-home demo

say "debconf answers (preseeded)"
run debconf-set-selections <<'SEL'
virtdeb virtdeb/allow_edit multiselect bridge.conf
virtdeb virtdeb/access_users string demo
virtdeb virtdeb/bridge_allow string br0
SEL
run sh -c 'debconf-get-selections 2>/dev/null | grep "^virtdeb" || debconf-show virtdeb' || true

cp -a "$R/etc" "$W/etc.before"
say "dpkg --unpack virtdeb (files in place, not configured yet)"
run dpkg --unpack /tmp/virtdeb.deb
say "virtdeb doctor BEFORE configuration"
run virtdeb doctor || echo "(doctor exit status $?)"

say "dpkg --configure virtdeb"
run dpkg --configure virtdeb
say "virtdeb doctor AFTER configuration"
run virtdeb doctor || echo "(doctor exit status $?)"

say "what the install changed in /etc"
diff -ruN --no-dereference -x ld.so.cache "$W/etc.before" "$R/etc" \
    | sed "s#$W/etc.before#/etc(before)#; s#$R/etc#/etc(after)#" || true
say "demo done; the chroot is removed"
