"""Test machinery: a private libvirtd (libvirtd.py), a private polkitd (polkit.py) and
the fault-injection roots and helpers (faults.py)."""
