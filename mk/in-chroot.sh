#!/bin/sh
# mk/in-chroot.sh CHROOT TREE CMD...: run CMD as root inside the chroot CHROOT
# (a suite's .cache/SUITE-test), with a copy of the source tree TREE at /src
# (the current directory of CMD), the tree's .build/ read-only there and its .cache/
# through a throwaway overlay (what tests add to it goes with the namespace).
#
# Everything is mounted inside a private mount namespace (unshare -m), so every
# mount goes with the namespace when CMD ends: CHROOT on itself (its / must be a
# mount point for the tests' own unshare -m), /proc and /sys of the host, a private
# /dev (tests/harness/private-dev.sh: its own nodes, never the host's), a fresh tmpfs
# on /run (ip netns keeps its namespaces in /run/netns there), /tmp and /src.  Nothing of CHROOT changes
# but what CMD writes outside /run, /tmp and /src.  Network namespaces that CMD
# made and did not delete are deleted; their processes are ended first.
set -eu
CHROOT=$(realpath "$1")
TREE=$(realpath "$2")
shift 2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
test -x "$CHROOT/bin/sh" || { echo "$0: $CHROOT is no chroot (no /bin/sh)" >&2; exit 2; }

exec unshare --mount --propagation private -- sh -eu -c '
    R=$1 T=$2; shift 2
    # the chroot'"'"'s / a mount point of its own: unshare -m inside needs one
    mount --bind "$R" "$R"
    mount -t proc proc "$R/proc"
    mount --rbind /sys "$R/sys"
    # a /dev of its own, never the host'"'"'s: a package installed inside (systemd-tmpfiles)
    # must not change the host'"'"'s /dev/kvm
    sh "$T/tests/harness/private-dev.sh" "$R/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$R/run"
    mkdir -p "$R/run/lock"
    mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
    mkdir -p "$R/src"
    mount -t tmpfs -o mode=0755 tmpfs "$R/src"
    # the tracked (and untracked, not ignored) files of the tree, as the package build copies them
    (cd "$T" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c "for f; do [ -e \"\$f\" ] || [ -L \"\$f\" ] && printf \"%s\\0\" \"\$f\"; done" sh \
        | tar --null -T - -cf -) | tar -C "$R/src" -xf -
    # .build read-only; .cache (images, caches tests keep between tests) through an
    # overlay whose upper layer is in /src'"'"'s tmpfs: tests may add to it, the tree'"'"'s
    # .cache never changes
    if [ -d "$T/.build" ]; then
        mkdir -p "$R/src/.build"
        mount --bind -o ro "$T/.build" "$R/src/.build"
    fi
    if [ -d "$T/.cache" ]; then
        mkdir -p "$R/src/.cache" "$R/src/.overlay/upper" "$R/src/.overlay/work"
        mount -t overlay overlay -o "lowerdir=$T/.cache,upperdir=$R/src/.overlay/upper,workdir=$R/src/.overlay/work" \
            "$R/src/.cache"
    fi
    cp /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
    set +e
    chroot "$R" env -i PATH="$PATH" HOME=/root LC_ALL=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
        TMPDIR=/tmp ${CI:+CI=$CI} sh -c "cd /src && exec \"\$@\"" sh "$@"
    rc=$?
    # namespaces (and their dnsmasq, libvirtd) a failed test left behind
    for ns in $(chroot "$R" ip netns list 2>/dev/null | cut -d" " -f1); do
        for pid in $(chroot "$R" ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        chroot "$R" ip netns del "$ns" 2>/dev/null
    done
    exit $rc
' sh "$CHROOT" "$TREE" "$@"
