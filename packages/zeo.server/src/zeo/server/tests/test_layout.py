"""The monorepo's build: pins kept in step, the reference kept off runtime paths.

These tests need a buildout checkout (``bin/`` made by ``bootstrap.py``);
under tox there is none and they are skipped.
"""

import configparser
import os
import re
import signal
import socket
import subprocess
import time
import unittest

from zeo.server.tests.support import CHECKOUT


class _CaseKeepingParser(configparser.ConfigParser):
    """Keeps the case of option names (ConfigParser lowers it)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def buildout_versions() -> dict[str, str]:
    parser = _CaseKeepingParser(interpolation=None)
    parser.read(CHECKOUT / "versions.cfg")
    return {name.lower(): value for name, value in parser["versions"].items()}


@unittest.skipIf(CHECKOUT is None, "not in a checkout")
class PinsTests(unittest.TestCase):
    def test_constraints_agree_with_buildout(self):
        versions = buildout_versions()
        lines = (CHECKOUT / "constraints.txt").read_text().splitlines()
        pins = dict(
            line.split("==") for line in lines if line and not line.startswith("#")
        )
        self.assertTrue(pins)
        for name, version in pins.items():
            self.assertEqual(
                versions.get(name.lower()), version,
                f"{name}: constraints.txt says {version}, versions.cfg "
                f"says {versions.get(name.lower())}; keep the two in step")

    def test_bootstrap_toolchain_agrees_with_buildout(self):
        versions = buildout_versions()
        source = (CHECKOUT / "bootstrap.py").read_text()
        toolchain = dict(re.findall(r'^\s+"([\w.]+)": "([\w.]+)",$', source, re.M))
        # zc.buildout's own dependencies too: left to pip they come in newer
        # than versions.cfg pins them, and every re-run reinstalls the parts.
        self.assertEqual(set(toolchain), {"pip", "setuptools", "wheel", "zc.buildout",
                                          "packaging", "platformdirs"})
        for name, version in toolchain.items():
            self.assertEqual(versions[name.lower()], version, name)


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "py").exists(),
                 "no buildout scripts")
class ScriptsTests(unittest.TestCase):
    def run_script(self, script, code):
        return subprocess.run(
            [str(CHECKOUT / "bin" / script), "-c", code],
            capture_output=True, text=True, timeout=120)

    def test_py_imports_ours_but_not_the_reference(self):
        ours = self.run_script("py", "import zeo.protocol, zeo.server, zeo.client")
        self.assertEqual(ours.returncode, 0, ours.stderr)
        reference = self.run_script("py", "import ZEO")
        self.assertNotEqual(reference.returncode, 0)
        self.assertIn("No module named 'ZEO'", reference.stderr)

    def test_reference_py_imports_the_reference(self):
        result = self.run_script(
            "reference-py", "import ZEO, importlib.metadata as m; print(m.version('ZEO'))")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "6.2")

    def test_runzeo_path_does_not_hold_the_reference(self):
        script = (CHECKOUT / "bin" / "runzeo").read_text()
        self.assertIn("zeo.server", script)
        self.assertNotRegex(script, r"(?i)/ZEO-6")


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "zeo").exists(),
                 "no buildout scripts")
class ReadmeServerCommandTests(unittest.TestCase):
    """``bin/zeo fg``, the README's server command, serves 127.0.0.1:8100."""

    def test_bin_zeo_fg_serves_the_var_file_storage(self):
        from zeo.server.tests.rawclient import RawClient
        if port_in_use(8100):
            self.skipTest("something already listens on 127.0.0.1:8100")
        process = subprocess.Popen([str(CHECKOUT / "bin" / "zeo"), "fg"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    # Read-only: the developer's var/zeo data stays untouched.
                    client = RawClient(("127.0.0.1", 8100), read_only=True)
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        self.fail("bin/zeo fg did not start serving")
                    time.sleep(0.1)
            info = client.call("get_info")
            client.close()
            self.assertTrue(info["name"].endswith(os.path.join("var", "zeo", "Data.fs")))
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
