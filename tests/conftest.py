pytest_plugins = ("tests.plugins.services",)
