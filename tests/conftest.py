pytest_plugins = ["tests.comfy_server.plugin"]
