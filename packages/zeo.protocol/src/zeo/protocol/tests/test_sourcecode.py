"""Rules about the package's own source, checked with ``ast``.

zeo.protocol is sans-IO: no module may import asyncio, socket, threading or
time (at any level, anywhere in the file), and it must not need ZODB or the
reference ZEO at run time.
"""

import ast
import os
import subprocess
import sys
import unittest
from pathlib import Path

import zeo.protocol


PACKAGE = Path(zeo.protocol.__file__).parent
FORBIDDEN = {"asyncio", "socket", "threading", "time", "_thread", "selectors", "ZEO"}
MAX_LINES = 600


def modules():
    """Every implementation module (not the tests)."""
    return sorted(p for p in PACKAGE.glob("*.py"))


def imports(tree):
    """Yield ``(top-level module name, node, inside a function)``."""
    function_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function_nodes.update(id(child) for child in ast.walk(node) if child is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node, id(node) in function_nodes
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node, id(node) in function_nodes
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield str(node.args[0].value).split(".")[0], node, id(node) in function_nodes


class SourceCodeTests(unittest.TestCase):

    def test_we_look_at_the_real_modules(self):
        names = {p.name for p in modules()}
        self.assertTrue({"connection.py", "framing.py", "events.py"} <= names)

    def test_no_io_modules(self):
        for path in modules():
            tree = ast.parse(path.read_text(), str(path))
            for name, node, _ in imports(tree):
                with self.subTest(module=path.name, line=node.lineno):
                    self.assertNotIn(name, FORBIDDEN)

    def test_zodb_only_inside_functions_of_zodb_errors(self):
        for path in modules():
            tree = ast.parse(path.read_text(), str(path))
            for name, node, in_function in imports(tree):
                if name == "ZODB":
                    with self.subTest(module=path.name, line=node.lineno):
                        self.assertEqual(path.name, "zodb_errors.py")
                        self.assertTrue(in_function)

    def test_the_checker_finds_what_it_should(self):
        tree = ast.parse(
            "import asyncio.events\n"
            "from time import monotonic\n"
            "def f():\n    import ZODB.POSException\n"
            "__import__('socket')\n"
        )
        found = {(name, inside) for name, _, inside in imports(tree)}
        self.assertEqual(
            found, {("asyncio", False), ("time", False), ("ZODB", True), ("socket", False)}
        )

    def test_importing_the_package_pulls_in_no_io_or_zodb(self):
        src = str(PACKAGE.parent.parent)
        script = (
            "import sys\n"
            f"sys.path.insert(0, {src!r})\n"
            "before = set(sys.modules)\n"
            "import zeo.protocol\n"
            "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
            "print(sorted(new & {'asyncio', 'socket', 'threading', 'ZODB', 'ZEO'}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONWARNINGS": "ignore",
                 "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")

    def test_module_size(self):
        for path in modules():
            with self.subTest(module=path.name):
                self.assertLessEqual(len(path.read_text().splitlines()), MAX_LINES)

    def test_every_module_declares_its_public_names(self):
        for path in modules():
            if path.name == "__init__.py":
                continue
            tree = ast.parse(path.read_text(), str(path))
            declared = [
                node for node in tree.body
                if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            ]
            with self.subTest(module=path.name):
                self.assertEqual(len(declared), 1)

    def test_package_all_is_importable(self):
        for name in zeo.protocol.__all__:
            with self.subTest(name=name):
                self.assertTrue(hasattr(zeo.protocol, name))
        self.assertEqual(len(set(zeo.protocol.__all__)), len(zeo.protocol.__all__))

    def test_py_typed_is_shipped(self):
        self.assertTrue((PACKAGE / "py.typed").is_file())
