#!/bin/sh
# mk/host-guard.sh save FILE | compare FILE: what `make check` must leave as it found.
#
#   save FILE     writes the host's state to FILE: owner and mode of every entry of /dev
#                 (not in /dev/pts and /dev/shm), the checksums of /etc/passwd, /etc/group, /etc/shadow
#                 and /etc/gshadow, the mounts (mount point, type, source), the network
#                 namespaces, and the processes that run detached (parent pid 1)
#   compare FILE  the same now, against FILE: prints each difference and exits 1 if any
#
# Processes: a daemon that a test left behind ends up a child of pid 1, so the new
# processes whose parent is pid 1 are what counts (a process started by someone else in
# the meantime is a child of its own shell and does not).  The one change `make check`
# makes on purpose, root's line in /etc/subuid and /etc/subgid, is not compared; nor is
# /run/netns itself, which `ip netns add` makes a mount point once and for all.
set -eu
export LC_ALL=C
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
        echo "process $pid $comm"
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
    if diff -U0 "$2" "$now" | grep -v '^@@' | tail -n +3 > "$now.diff" && [ -s "$now.diff" ]; then
        echo "host-guard: FAIL: the host changed during make check (- before, + after):"
        sed 's/^/host-guard:   /' "$now.diff"
        rm -f "$now" "$now.diff"
        exit 1
    fi
    rm -f "$now" "$now.diff"
    echo "host-guard: PASS: /dev, users and groups, mounts, network namespaces and detached processes as before"
    ;;
*)
    echo "usage: $0 save|compare FILE" >&2
    exit 2
    ;;
esac
