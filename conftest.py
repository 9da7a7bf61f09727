"""Repo-root conftest: makes the drift_suite pytest plugin available in a source checkout.

An installed drift_suite registers its plugin through the ``pytest11`` entry point; a checkout used
without ``pip install`` gets it from here instead (registering it twice would be an error).
"""

from importlib.metadata import entry_points

if not any(ep.value == "drift_suite.plugin" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["drift_suite.plugin"]
