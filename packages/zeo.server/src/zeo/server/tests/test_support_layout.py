"""Test support has one home per package, and the scripts use only what
they may (issue #21).

- ``free_port``, ``ServerProcess`` and ``wait_until`` are defined once per
  package, in its ``tests/support.py`` (``free_port`` once, in the public
  ``zeo.server.testing``);
- no module imports from a ``test_*`` module (test modules import their
  helpers from support modules), except the ones listed in `PENDING`;
- ``scripts/`` import public modules only: nothing from a test package
  (``zeo.*.tests``); the test tools that need one (the long soak, crash and
  fuzz runs) are modules of the test package, run with ``bin/py -m``
  (`TEST_TOOLS`);
- ``scripts/`` leave ``sys.path`` alone except those run by interpreters
  without our packages (`PATH_EDITING`);
- the scripts that ``bin/py`` runs import there, and the test tools run
  there (its path has ``scripts/`` and the packages, not the test extras);
- the client's and the server's tests build a child process's
  ``PYTHONPATH`` in one place, their ``support.child_env``;
- the shim ``tests/serverprocess.py`` stays gone (import from
  ``tests/support.py``).
"""

from __future__ import annotations

import ast
import fnmatch
import os
import subprocess
import tempfile
import unittest
from pathlib import Path

from zeo.server.tests.support import CHECKOUT

#: Where each helper may be defined (relative to the checkout).
HOMES = {
    "free_port": {"packages/zeo.server/src/zeo/server/testing.py"},
    "ServerProcess": {"packages/zeo.server/src/zeo/server/tests/support.py"},
    "wait_until": {"packages/zeo.client/src/zeo/client/tests/support.py",
                   "packages/zeo.server/src/zeo/server/tests/support.py",
                   # returns a bool: a fake server's own, not the tests' one
                   "packages/zeo.client/src/zeo/client/tests/hostile.py"},
}
#: Modules still importing from a test module (none now).
PENDING: tuple[str, ...] = ()
#: Scripts run by interpreters that lack our packages (bin/reference-py,
#: a plain or atheris Python): they add the sources to ``sys.path``.
PATH_EDITING = {"bench_client.py", "bench_cache_reopen.py", "bench_protocol.py"}
#: Test tools: ``bin/py -m <module> -- --help`` must work (bin/py reads
#: options up to ``--`` itself), and what they run must import without
#: the test extras.
TEST_TOOLS = ("zeo.server.tests.soak", "zeo.server.tests.crash_consistency",
              "zeo.server.tests.fuzz_server")
TOOL_MACHINERY = ("zeo.server.tests.soaking", "zeo.server.tests.crashing",
                  "zeo.server.tests.fuzzing")


def sources() -> list[Path]:
    roots = [CHECKOUT / "packages" / name / "src"
             for name in ("zeo.protocol", "zeo.server", "zeo.client")]
    return sorted(p for root in roots for p in root.rglob("*.py")) + scripts()


def scripts() -> list[Path]:
    return sorted((CHECKOUT / "scripts").rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(CHECKOUT).as_posix()


def sets_pythonpath(tree: ast.AST) -> bool:
    """Whether *tree* builds an environment with ``PYTHONPATH`` in it."""
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "PYTHONPATH":
            return True
        if isinstance(node, ast.Dict) and any(
                isinstance(key, ast.Constant) and key.value == "PYTHONPATH"
                for key in node.keys):
            return True
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                and isinstance(node.slice, ast.Constant) and node.slice.value == "PYTHONPATH"):
            return True
    return False


def imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@unittest.skipIf(CHECKOUT is None, "not in a checkout")
class SupportLayoutTests(unittest.TestCase):

    def test_helpers_are_defined_in_their_home_only(self):
        found: dict[str, set[str]] = {name: set() for name in HOMES}
        for path in sources():
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in found:
                    found[node.name].add(relative(path))
        self.assertEqual(found, HOMES)

    def test_no_module_imports_a_test_module(self):
        offenders = []
        for path in sources():
            if any(fnmatch.fnmatch(relative(path), pattern) for pattern in PENDING):
                continue
            own = path.stem
            for name in imported_modules(ast.parse(path.read_bytes())):
                last = name.rsplit(".", 1)[-1]
                if last.startswith("test_") and last != own:
                    offenders.append(f"{relative(path)}: {name}")
        self.assertEqual(offenders, [])

    def test_child_environments_come_from_support(self):
        builders = set()
        for package in ("zeo.server", "zeo.client"):
            tests = CHECKOUT / "packages" / package / "src" / "zeo" / package[4:] / "tests"
            builders |= {relative(path) for path in tests.rglob("*.py")
                         if sets_pythonpath(ast.parse(path.read_bytes()))}
        self.assertEqual(builders, {"packages/zeo.client/src/zeo/client/tests/support.py",
                                    "packages/zeo.server/src/zeo/server/tests/support.py"})

    def test_scripts_import_no_test_package(self):
        offenders = [f"{relative(path)}: {name}"
                     for path in scripts()
                     for name in imported_modules(ast.parse(path.read_bytes()))
                     if "tests" in name.split(".")]
        self.assertEqual(offenders, [])

    def test_no_re_export_shim(self):
        shim = CHECKOUT / "packages/zeo.server/src/zeo/server/tests/serverprocess.py"
        self.assertFalse(shim.exists(), "import ServerProcess from tests/support.py")

    def test_scripts_leave_sys_path_alone(self):
        editing = {path.name for path in scripts()
                   if "sys.path.insert" in path.read_text()
                   or "sys.path.extend" in path.read_text()
                   or "sys.path.append" in path.read_text()}
        self.assertEqual(editing, PATH_EDITING)

    def test_the_scripts_bin_py_runs_import_there(self):
        # scripts/ is on bin/py's path (the buildout's extra-paths).
        python = CHECKOUT / "bin" / "py"
        self.assertTrue(python.exists(), f"no {python}")
        # bin/py's own path only, not the test runner's.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with tempfile.TemporaryDirectory(prefix="zeo-scripts-") as directory:
            done = subprocess.run(
                [str(python), "-c", "import benchmark, " + ", ".join(TOOL_MACHINERY)],
                capture_output=True, text=True, timeout=120, cwd=directory, env=env)
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            for module in TEST_TOOLS:
                done = subprocess.run(
                    [str(python), "-m", module, "--", "--help"],
                    capture_output=True, text=True, timeout=120, cwd=directory, env=env)
                self.assertEqual(done.returncode, 0, f"{module}: {done.stderr[-3000:]}")
                self.assertIn("usage:", done.stdout)
