"""Test machinery, one job per module; no module takes another's private names
(tests/test_house.py checks it):

- procs.py      processes and network namespaces: the clean PATH, is_gone, netns_pids,
                kill every process of a namespace, sweep what a dead owner left
- chroot.py     the root a private daemon sees: the mounts of its private mount
                namespace, the private /dev (private-dev.sh)
- libvirtd.py   PrivateLibvirtd, a real libvirtd in private namespaces (host or chroot)
- plugin.py     the pytest plugin: the daemon fixtures, the integration marker, the
                teardown notes in the summary
- skips.py      the pytest plugin that counts skips (VIRTDEB_COUNT_SKIPS)
- cpucaps.py    a chosen CPU for a private libvirtd (its qemu capabilities, edited)
- fleet.py      a fleet of libvirt hosts in network namespaces, for Ansible
- polkit.py     a private polkitd on a private D-Bus
- booted.py     a Debian system booted in systemd-nspawn
- faults.py     fault-injection roots and helpers; lockchild.py, a child holding the lock
"""
