pytest_plugins = ["tests.harness.libvirtd"]
