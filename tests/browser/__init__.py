"""Real-browser tests: JupyterLab driven by Playwright with the system's chromium.

A package (this file) so that its conftest does not shadow ``tests/conftest.py``, which
the other test modules import by name.
"""
