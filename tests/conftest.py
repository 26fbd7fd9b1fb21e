pytest_plugins = ("tests.plugins.services", "tests.plugins.real_components")
