"""virtdeb: the libvirt host set-up of README.Debian, done for the administrator."""

__version__ = "0.1.0"
