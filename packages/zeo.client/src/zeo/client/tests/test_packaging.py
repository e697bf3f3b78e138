"""zeo.client installs and imports without zeo.server or zdaemon."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import zeo.client
from zeo.client.tests.support import child_env

PACKAGE = Path(zeo.client.__file__).resolve().parent
FORBIDDEN = ("zeo.server", "zdaemon", "ZEO")


def runtime_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tests" not in path.relative_to(PACKAGE).parts:
            yield path


def imported_names(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


class ImportTests(unittest.TestCase):
    def test_runtime_code_imports_no_server(self):
        modules = list(runtime_modules())
        self.assertTrue(modules)
        for path in modules:
            for name in imported_names(path):
                for forbidden in FORBIDDEN:
                    self.assertFalse(
                        name == forbidden or name.startswith(forbidden + "."),
                        f"{path} imports {name}")

    def test_importing_the_client_loads_no_server(self):
        code = (
            "import sys, zeo.client, zeo.client.interfaces\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('zdaemon', 'ZEO')"
            " or m.startswith('zeo.server')]\n"
            "print(bad)\n")
        env = child_env()
        result = subprocess.run([sys.executable, "-c", code], env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "[]")

    def test_metadata_requires_no_server(self):
        requires = importlib.metadata.requires("zeo.client") or []
        runtime = [r for r in requires if "extra ==" not in r]
        self.assertTrue(any(r.startswith("zeo-protocol") for r in runtime), runtime)
        names = {re.match(r"[\w.-]+", r).group().lower().replace(".", "-")
                 for r in runtime}
        self.assertIn("zodb", names)
        self.assertFalse(names & {"zeo-server", "zdaemon", "zeo"}, names)


def find_checkout():
    for parent in PACKAGE.parents:
        if (parent / "constraints.txt").is_file() and (parent / "packages").is_dir():
            return parent
    return None


@unittest.skipIf(find_checkout() is None, "not in a checkout")
class FreshVenvTests(unittest.TestCase):
    """pip-install protocol and client alone into a fresh venv (uses PyPI)."""

    def test_client_installs_alone(self):
        checkout = find_checkout()
        with tempfile.TemporaryDirectory() as tmp:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           timeout=120)
            python = str(venv / "bin" / "python")
            install = subprocess.run(
                [python, "-m", "pip", "install", "--quiet",
                 "-c", str(checkout / "constraints.txt"),
                 str(checkout / "packages" / "zeo.protocol"),
                 str(checkout / "packages" / "zeo.client")],
                capture_output=True, text=True, timeout=600)
            self.assertEqual(install.returncode, 0, install.stderr[-3000:])
            listing = subprocess.run([python, "-m", "pip", "list"], check=True,
                                     capture_output=True, text=True, timeout=120)
            installed = {line.split()[0].lower() for line in listing.stdout.splitlines()[2:]}
            self.assertIn("zeo.client", installed)
            self.assertIn("zodb", installed)
            for name in ("zeo.server", "zeo-server", "zdaemon", "zeo"):
                self.assertNotIn(name, installed)
            # A working client: it connects to a real server and commits.
            import zeo.server
            address, stop = zeo.server.server()
            try:
                script = (
                    "import sys, zeo.client\n"
                    f"db = zeo.client.DB({tuple(address)!r}, wait_timeout=30)\n"
                    "with db.transaction() as connection:\n"
                    "    connection.root.answer = 42\n"
                    "with db.transaction() as connection:\n"
                    "    print(connection.root.answer)\n"
                    "db.close()\n"
                    "print(sorted(m for m in sys.modules if m.startswith(('zeo.server', 'zdaemon'))))\n")
                used = subprocess.run([python, "-c", script], capture_output=True,
                                      text=True, timeout=120, cwd=tmp)
            finally:
                stop()
            self.assertEqual(used.stdout.split(), ["42", "[]"], used.stderr)
