"""The three packages' source, checked as part of the test run.

* flake8 (pyflakes: unused imports, undefined names, ...) and mypy, with
  the one configuration in the checkout's ``setup.cfg``; a test fails with
  their findings. mypy keeps its cache in ``var/mypy-cache`` (the build's,
  not the source tree's).
* Every implementation module (not the tests) declares ``__all__`` and has
  at most ``MAX_LINES`` lines; a module may be exempted for a while below.

These need the checkout (its ``setup.cfg``): a buildout, or tox's editable
installs.
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import zeo.client
import zeo.protocol
import zeo.server
from zeo.server.tests.support import child_env

__all__ = ["MAX_LINES", "EXEMPT", "EXEMPT_NEW", "implementation_modules"]

PACKAGES = {
    "zeo.protocol": Path(zeo.protocol.__file__).parent,
    "zeo.server": Path(zeo.server.__file__).parent,
    "zeo.client": Path(zeo.client.__file__).parent,
}
CHECKOUT = PACKAGES["zeo.server"].parents[4]
MAX_LINES = 600

#: Modules exempt from the ``__all__`` and size rules while a change
#: reworks them (none now).
EXEMPT: dict[str, set[str]] = {}
#: Patterns of modules being added, exempt likewise (none now).
EXEMPT_NEW: dict[str, tuple[str, ...]] = {}


def exempt(package: str, path: Path) -> bool:
    name = path.relative_to(PACKAGES[package]).as_posix()
    return name in EXEMPT.get(package, ()) or any(
        fnmatch.fnmatch(name, pattern) for pattern in EXEMPT_NEW.get(package, ()))


def implementation_modules(package: str) -> list[Path]:
    """The package's modules, subpackages included, tests excluded."""
    root = PACKAGES[package]
    return sorted(
        path for path in root.rglob("*.py")
        if "tests" not in path.relative_to(root).parts)


def declares_all(tree: ast.Module) -> bool:
    return sum(
        1 for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and any(getattr(target, "id", None) == "__all__"
                for target in (node.targets if isinstance(node, ast.Assign)
                               else [node.target]))) == 1


def run_tool(*args: str, cwd: Path = CHECKOUT) -> subprocess.CompletedProcess:
    """``python -m <tool>`` in the checkout, with this test run's path."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
        timeout=600,
        env=child_env())


class SourceRulesTests(unittest.TestCase):

    def test_every_module_declares_all_and_stays_small(self):
        checked = 0
        for package in PACKAGES:
            for path in implementation_modules(package):
                if exempt(package, path):
                    continue
                text = path.read_text()
                name = str(path.relative_to(PACKAGES[package].parent))
                with self.subTest(module=name):
                    self.assertLessEqual(len(text.splitlines()), MAX_LINES)
                    if path.name != "__init__.py":
                        self.assertTrue(declares_all(ast.parse(text, name)),
                                        "no (or more than one) __all__")
                checked += 1
        self.assertGreater(checked, 60)

    def test_exemptions_name_existing_modules(self):
        for package, names in EXEMPT.items():
            for name in names:
                self.assertTrue((PACKAGES[package] / name).is_file(), name)

    def test_the_all_rule_sees_what_it_should(self):
        self.assertTrue(declares_all(ast.parse("__all__ = ['a']\n")))
        self.assertTrue(declares_all(ast.parse("__all__: list[str] = []\n")))
        self.assertFalse(declares_all(ast.parse("def f():\n    __all__ = []\n")))


class ToolsTests(unittest.TestCase):

    def test_configuration_is_the_checkouts(self):
        self.assertTrue((CHECKOUT / "setup.cfg").is_file(), CHECKOUT)

    def test_flake8(self):
        result = run_tool("flake8", "packages")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy(self):
        result = run_tool("mypy")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("Success", result.stdout)

    def test_the_tools_find_what_they_should(self):
        with tempfile.TemporaryDirectory() as tmp:
            bad = Path(tmp) / "bad.py"
            bad.write_text("import os\n\ndef f(x: int) -> str:\n    return x\n")
            flake8 = run_tool("flake8", str(bad))
            self.assertIn("F401", flake8.stdout)
            mypy = run_tool("mypy", str(bad))
            self.assertIn("[return-value]", mypy.stdout)


if __name__ == "__main__":
    unittest.main()
