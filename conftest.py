"""Repository-level pytest configuration.

``pytester`` drives the plugin's black-box tests in ``tests/``; pytest only accepts
``pytest_plugins`` in the top-level conftest, hence here.
"""

pytest_plugins = ("pytester",)
