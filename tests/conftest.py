pytest_plugins = ["tests.harness.libvirtd", "tests.harness.cpucaps", "tests.harness.skips"]
