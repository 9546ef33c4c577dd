#!/bin/sh
# mk/host-guard.sh save FILE | compare FILE: what `make check` must leave as it found.
#
#   save FILE     writes the host's state to FILE: owner and mode of every entry of /dev
#                 (not in /dev/pts and /dev/shm), the checksums of /etc/passwd,
#                 /etc/group, /etc/shadow and /etc/gshadow, the mounts (mount point,
#                 type, source), the network namespaces, and the detached processes
#   compare FILE  the same now, against FILE: prints each difference and exits 1 if the
#                 check left something behind or changed something of the host
#
# What fails the check: any change in /dev or in the four files; a mount, a network
# namespace or a detached process that is there now and was not before.  What went away
# meanwhile (a mount, a namespace or a process of someone else's, ended by its owner) is
# printed, not a failure: the check removes nothing of the host's.
#
# Detached processes: a daemon that a test left behind ends up a child of pid 1.  Of the
# new children of pid 1, those whose name is one of the programs the tests start count;
# another program that someone else started on the machine meanwhile does not.
# The one change `make check` makes on purpose, root's line in /etc/subuid and
# /etc/subgid, is not compared; nor is /run/netns itself, which `ip netns add` makes a
# mount point once and for all.
set -eu
export LC_ALL=C
OURS=" libvirtd virtlogd virtlockd dnsmasq sshd ssh qemu-system-x86 qemu-system-x86_64 \
polkitd dbus-daemon systemd systemd-nspawn systemd-journal systemd-udevd python3 pytest \
virtqemud virtnetworkd gpg-agent dirmngr nc socat apt apt-get dpkg mmdebstrap piuparts \
autopkgtest "

state() {
    find /dev -mindepth 1 \( -path /dev/pts -o -path '/dev/shm/*' \) -prune \
        -o -printf 'dev %p %M %u:%g\n' | sort
    for f in /etc/passwd /etc/group /etc/shadow /etc/gshadow; do
        [ ! -e "$f" ] || echo "file $f $(sha256sum < "$f" | cut -d' ' -f1)"
    done
    awk '{ split($0, a, " - "); split(a[2], b, " "); print "mount " $5 " " b[1] " " b[2] }' \
        /proc/self/mountinfo | grep -v '^mount /run/netns ' | sort -u
    ls /run/netns 2>/dev/null | sed 's/^/netns /' | sort
    for s in /proc/[0-9]*/stat; do
        { read -r line < "$s"; } 2>/dev/null || continue
        rest=${line##*) }
        set -- $rest
        [ "$2" = 1 ] || continue
        pid=${s#/proc/}; pid=${pid%/stat}
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case "$OURS" in *" $comm "*) mine=yes ;; *) mine=no ;; esac
        echo "process $pid $comm $mine"
    done | sort
}

case ${1:-} in
save)
    state > "$2"
    echo "host-guard: saved the host's state ($(wc -l < "$2") lines) to $2"
    ;;
compare)
    now=$(mktemp)
    state > "$now"
    bad=$(diff "$2" "$now" | sed -n 's/^< \(dev\|file\) /- \1 /p; s/^> \(dev\|file\|mount\|netns\) /+ \1 /p;
        s/^> \(process .* yes\)$/+ \1/p')
    gone=$(diff "$2" "$now" | sed -n 's/^< \(mount\|netns\|process\) /\1 /p')
    rm -f "$now"
    [ -z "$gone" ] || printf '%s\n' "$gone" | sed 's/^/host-guard: gone meanwhile (not a failure): /'
    if [ -n "$bad" ]; then
        echo "host-guard: FAIL: make check changed the host or left this behind (- before, + after):"
        printf '%s\n' "$bad" | sed 's/^/host-guard:   /'
        exit 1
    fi
    echo "host-guard: PASS: /dev, users and groups, mounts, network namespaces and detached processes as before"
    ;;
*)
    echo "usage: $0 save|compare FILE" >&2
    exit 2
    ;;
esac
