"""Run the narrative pages in the checkout's ``docs/`` as doctests.

Each package's ``test_docs.py`` names its pages. The pages live at the top of
the monorepo, so they are found by walking up from this file; in an install
that is not a checkout (a wheel) there is no ``docs/`` and no page runs.
"""

from __future__ import annotations

import doctest
import unittest
from pathlib import Path

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.REPORT_NDIFF


def find_docs() -> Path | None:
    """The checkout's ``docs`` folder, or None outside a checkout."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "docs" / "conf.py").is_file() and (parent / "packages").is_dir():
            return parent / "docs"
    return None


def doc_suite(*pages: str) -> unittest.TestSuite:
    """A suite running each named page (e.g. ``"protocol.rst"``)."""
    docs = find_docs()
    suite = unittest.TestSuite()
    if docs is None:
        return suite
    for page in pages:
        path = docs / page
        if not path.is_file():
            raise FileNotFoundError(f"narrative doc {path} is missing")
        suite.addTest(
            doctest.DocFileSuite(str(path), module_relative=False, optionflags=FLAGS)
        )
    return suite
