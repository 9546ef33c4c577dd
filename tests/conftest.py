pytest_plugins = ["tests.harness.plugin", "tests.harness.skips"]
