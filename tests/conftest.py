pytest_plugins = ["tests.libvirtd"]
