#!/bin/sh
# tests/harness/private-dev.sh DIR [KVM_GID]: a private /dev on DIR, never the host's.
#
# A chroot or container of the tests gets this instead of the host's /dev: a tmpfs with
# its own device nodes (mknod: new inodes, so a chmod or chown inside, e.g. by
# systemd-tmpfiles in a package's postinst, never reaches the host's nodes), a devpts of
# its own (newinstance), a tmpfs /dev/shm and the usual links, as mmdebstrap makes it.
# /dev/kvm is 0600 root, or 0660 root:KVM_GID (what Debian's udev rule gives) when
# KVM_GID is given; /dev/kvm, /dev/net/tun and /dev/vhost-net only where the host has
# them.  Run it inside a private mount namespace (unshare -m): every mount goes with it.
set -eu
D=$1
KVM_GID=${2:-}
# what the host has, read before DIR (possibly /dev itself) is covered
HAS_KVM=no HAS_TUN=no HAS_VHOST=no
[ ! -c /dev/kvm ] || HAS_KVM=yes
[ ! -c /dev/net/tun ] || HAS_TUN=yes
[ ! -c /dev/vhost-net ] || HAS_VHOST=yes
mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs "$D"
node() {  # node NAME MAJOR MINOR MODE
    mknod -m "$4" "$D/$1" c "$2" "$3"
}
node null 1 3 666
node zero 1 5 666
node full 1 7 666
node random 1 8 666
node urandom 1 9 666
node tty 5 0 666
if [ $HAS_KVM = yes ]; then
    if [ -n "$KVM_GID" ]; then
        node kvm 10 232 660
        chown "0:$KVM_GID" "$D/kvm"
    else
        node kvm 10 232 600
    fi
fi
if [ $HAS_TUN = yes ]; then
    mkdir -m 0755 "$D/net"
    node net/tun 10 200 666
fi
[ $HAS_VHOST = no ] || node vhost-net 10 238 600
mkdir -m 0755 "$D/pts" "$D/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$D/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$D/shm"
chmod 1777 "$D/shm"
ln -s pts/ptmx "$D/ptmx"
ln -s /proc/self/fd "$D/fd"
ln -s /proc/self/fd/0 "$D/stdin"
ln -s /proc/self/fd/1 "$D/stdout"
ln -s /proc/self/fd/2 "$D/stderr"
