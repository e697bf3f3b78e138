"""Sphinx configuration for the zeo documentation."""

project = "zeo"
author = "the zeo developers"
copyright = "2026, the zeo developers"
extensions = ["sphinx.ext.doctest"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
# The narrative pages are plain doctests (run by bin/test); Sphinx's doctest
# builder can run them too: ``sphinx-build -b doctest docs docs/_build``.
doctest_test_doctest_blocks = "default"
