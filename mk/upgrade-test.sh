#!/bin/sh
# mk/upgrade-test.sh MIRROR: Debian 12 -> 13 with virtdeb configured (make upgrade-test).
#
# In a throwaway copy of .cache/bookworm-minbase (mk/in-chroot.sh: private mount
# namespace, services never start): libvirt, qemu's bridge helper, dnsmasq and
# the built virtdeb installed with debconf answers (a user in the libvirt group,
# an allowed bridge, edits of bridge.conf allowed), a journal entry made by the
# command line (virtdeb debug --enable); the sources switched to trixie and
# `apt-get full-upgrade` run as an administrator would (keeping changed conffiles).
# Checked: apt and dpkg never fail; virtdeb.conf, bridge.conf, the group member
# and the dnsmasq drop-in kept; cap_net_admin back on qemu 10's helper; `virtdeb
# revert` of the bookworm-era journal entry works; doctor has no FAIL it did not
# have before; no Traceback and no "bug in virtdeb" anywhere.
set -eu
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8

if [ "${1:-}" != --inside ]; then
    MIRROR=$1
    TOP=$(cd "$(dirname "$0")/.." && pwd)
    test -d "$TOP/.cache/bookworm-minbase/usr" || { echo "$0: run make image first" >&2; exit 2; }
    W=$(mktemp -d "$TOP/.build/upgrade.XXXXXX")
    trap 'rm -rf --one-file-system "$W"' EXIT
    trap 'exit 130' INT TERM
    cp -a "$TOP/.cache/bookworm-minbase" "$W/root"
    rc=0
    "$TOP/mk/in-chroot.sh" "$W/root" "$TOP" env MIRROR="$MIRROR" sh mk/upgrade-test.sh --inside \
        || rc=$?
    exit $rc
fi

# --- inside the chroot (cwd /src: the tree, .build/ with the package) --------
export DEBIAN_FRONTEND=noninteractive
FAILS=0
LOG=/tmp/upgrade.log
ok()  { echo "ok: $*"; }
bad() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { _d=$1; shift; if "$@"; then ok "$_d"; else bad "$_d"; fi; }
say() { echo; echo "=== $*"; }
APT="apt-get -y -q -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
DEB=$(ls /src/.build/virtdeb_*_all.deb | head -n1)
# doctor WHEN: virtdeb doctor, shown; its findings "STATUS rule: message" in /tmp/doctor-WHEN
cat > /tmp/findings.py <<'PY'
import json, sys
for f in json.load(sys.stdin):
    print(f"{f['status']} {f['rule']}: {f['message']}")
PY
doctor() {
    virtdeb doctor 2>&1 | tee -a "$LOG" || true
    virtdeb doctor --json 2>>"$LOG" | python3 /tmp/findings.py > "/tmp/doctor-$1" || true
}
# run COMMAND..., its output to the terminal and to $LOG; its exit status
logged() { { "$@" 2>&1; echo "exit=$?" > /tmp/rc; } | tee -a "$LOG"; return "$(cut -d= -f2 /tmp/rc)"; }

say "bookworm: libvirt, qemu's bridge helper, dnsmasq, virtdeb with answers"
printf 'deb %s bookworm main\n' "$MIRROR" > /etc/apt/sources.list
logged apt-get update -q >/dev/null
useradd --no-create-home vdup
debconf-set-selections <<'SEL'
virtdeb virtdeb/allow_edit multiselect bridge.conf
virtdeb virtdeb/access_users string vdup
virtdeb virtdeb/bridge_allow string br0
SEL
cp "$DEB" /tmp/
check "apt-get install on bookworm" logged $APT install --no-install-recommends \
    libvirt-daemon-system qemu-system-common dnsmasq libcap2-bin "/tmp/$(basename "$DEB")"
check "virtdeb debug --enable (a journal entry made by the CLI)" logged virtdeb debug --enable
ID=$(virtdeb revert --list | awk '/debug/ {print $1; exit}')
virtdeb revert --list
check "the journal names the debug entry ($ID)" test -n "$ID"
grep -E '^log_(filters|outputs)' /etc/libvirt/libvirtd.conf
doctor before
check "doctor on bookworm: findings of every rule" sh -c \
    'test "$(cut -d: -f1 /tmp/doctor-before | cut -d" " -f2 | sort -u | wc -l)" -ge 9'
sha256sum /etc/virtdeb/virtdeb.conf /etc/qemu/bridge.conf /etc/dnsmasq.d/00_libvirtd.conf \
    > /tmp/sums-before
check "bookworm: helper has cap_net_admin" sh -c \
    'getcap /usr/lib/qemu/qemu-bridge-helper | grep -q cap_net_admin=ep'
check "bookworm: vdup in group libvirt" sh -c 'id -nG vdup | tr " " "\n" | grep -qx libvirt'
check "bookworm: drop-in binds to lo" grep -qx 'interface=lo' /etc/dnsmasq.d/00_libvirtd.conf
check "bookworm: bridge.conf allows br0" grep -qx 'allow br0' /etc/qemu/bridge.conf
QEMU_BEFORE=$(dpkg-query -W -f='${Version}' qemu-system-common)

say "sources to trixie, apt-get full-upgrade"
printf 'deb %s trixie main\n' "$MIRROR" > /etc/apt/sources.list
check "apt-get update (trixie)" logged apt-get update -q
check "apt-get full-upgrade" logged $APT full-upgrade
check "dpkg --audit finds nothing" sh -c 'test -z "$(dpkg --audit)"'
QEMU_AFTER=$(dpkg-query -W -f='${Version}' qemu-system-common)
echo "qemu-system-common $QEMU_BEFORE -> $QEMU_AFTER; python3 $(python3 -c 'import sys; print(sys.version.split()[0])')"
check "qemu upgraded to 10.x" sh -c "case '$QEMU_AFTER' in 1:10.*|10.*) true;; *) false;; esac"

say "trixie: what virtdeb set up is all there"
sha256sum /etc/virtdeb/virtdeb.conf /etc/qemu/bridge.conf /etc/dnsmasq.d/00_libvirtd.conf \
    > /tmp/sums-after
check "virtdeb.conf, bridge.conf and the drop-in kept byte for byte" \
    cmp -s /tmp/sums-before /tmp/sums-after
check "vdup still in group libvirt" sh -c 'id -nG vdup | tr " " "\n" | grep -qx libvirt'
getcap /usr/lib/qemu/qemu-bridge-helper || true
check "cap_net_admin back on qemu $QEMU_AFTER's helper" sh -c \
    'getcap /usr/lib/qemu/qemu-bridge-helper | grep -q cap_net_admin=ep'
doctor after
check "doctor on trixie: findings of every rule" sh -c \
    'test "$(cut -d: -f1 /tmp/doctor-after | cut -d" " -f2 | sort -u | wc -l)" -ge 9'
grep '^FAIL ' /tmp/doctor-before | sort > /tmp/fail-before || true
grep '^FAIL ' /tmp/doctor-after | sort > /tmp/fail-after || true
echo "doctor FAILs: bookworm $(wc -l < /tmp/fail-before), trixie $(wc -l < /tmp/fail-after)"
check "doctor: no FAIL it did not have on bookworm" sh -c \
    'test -z "$(comm -13 /tmp/fail-before /tmp/fail-after)"'
comm -13 /tmp/fail-before /tmp/fail-after | sed 's/^/new: /'
check "virtdeb revert $ID (the bookworm-era entry) on trixie" logged virtdeb revert "$ID"
check "log settings gone from libvirtd.conf" sh -c \
    '! grep -Eq "^log_(filters|outputs)" /etc/libvirt/libvirtd.conf'
check "no Traceback, no 'bug in virtdeb' in any output" sh -c \
    "! grep -n -e Traceback -e 'bug in virtdeb' '$LOG'"

echo
if [ "$FAILS" -eq 0 ]; then echo "upgrade test: all checks passed"; else echo "upgrade test: $FAILS FAILED"; fi
exit "$([ "$FAILS" -eq 0 ] && echo 0 || echo 1)"
