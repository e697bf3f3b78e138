"""bootstrap.py behind a mirror or offline (docs/development.rst).

The end-to-end tests run ``bootstrap.py`` in a temporary copy of the
checkout with the network shut: every proxy variable points at a local port
that refuses connections, pip's settings come only from the environment the
test gives, and ``HOME`` is a temporary directory (no ``~/.buildout``, no
user pip configuration, no pip cache). The indexes are local directories
(``file://`` URLs in the PEP 503 layout). The toolchain wheels come from the
checkout's own ``.venv``, zipped back up from the files its RECORDs list
(``pip download`` would need the network), and the eggs from the
checkout's eggs directory, which the copy only reads.

These tests need a checkout made by ``bootstrap.py``; under tox there is
none and they are skipped, as test_layout's are.
"""

from __future__ import annotations

import base64
import configparser
import csv
import hashlib
import html
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path
from types import ModuleType

from zeo.server.tests.support import CHECKOUT

__all__ = [
    "BootstrapOfflineTests",
    "PipConfTests",
    "closed_port",
    "copy_checkout",
    "offline_env",
    "repack_wheel",
    "write_index",
]

#: Bounded waits for one bootstrap run: a fresh build here takes about half
#: a minute on a busy machine; a run that waits on the network takes longer.
RUN_TIMEOUT = 300

#: What a copy of the checkout needs to build (buildout.cfg names them).
BUILD_FILES = ("bootstrap.py", "buildout.cfg", "versions.cfg", "packages", "scripts")

#: Left out of the copy: what builds leave in the sources.
BUILD_LITTER = shutil.ignore_patterns(
    "__pycache__", "*.egg-info", "*.so", "build", ".pytest_cache")


def load_bootstrap() -> ModuleType:
    """The checkout's bootstrap.py as a module (importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location("bootstrap", CHECKOUT / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toolchain_python() -> Path:
    return CHECKOUT / ".venv" / "bin" / "python"


def closed_port() -> socket.socket:
    """A socket bound to a 127.0.0.1 port and not listening: connecting to
    the port is refused at once for as long as the socket stays open."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def offline_env(home: Path, proxy_port: int, **pip: str) -> dict[str, str]:
    """The environment for a bootstrap run with the network shut.

    pip's settings are only the ``PIP_*`` given (as ``index_url=...``);
    ``PIP_CONFIG_FILE`` names an empty file so the user's pip.conf is not
    read (the machine-wide files still are; the ``PIP_*`` given override
    them, and anything they add that needs the network fails on the proxy).
    """
    env = {
        name: value for name, value in os.environ.items()
        if not name.startswith("PIP_") and not name.lower().endswith("_proxy")
        and name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONWARNINGS")
    }
    home.mkdir(parents=True, exist_ok=True)
    pip_conf = home / "pip.conf"
    pip_conf.write_text("")
    proxy = f"http://127.0.0.1:{proxy_port}"
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        PIP_CONFIG_FILE=str(pip_conf),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_EXTRA_INDEX_URL="",
        PIP_FIND_LINKS="",
        http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy,
        all_proxy=proxy, ALL_PROXY=proxy, no_proxy="", NO_PROXY="",
    )
    env.update({f"PIP_{key.upper()}": value for key, value in pip.items()})
    return env


def copy_checkout(dest: Path) -> Path:
    """The checkout's sources as they are now (not its build) in ``dest``."""
    dest.mkdir()
    for name in BUILD_FILES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=BUILD_LITTER)
        else:
            shutil.copy2(source, dest / name)
    return dest


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
    return "sha256=" + digest.rstrip(b"=").decode()


def repack_wheel(dist_info: Path, dest: Path) -> Path:
    """Zip an installed distribution back into a wheel in ``dest``.

    Its files are the ones its RECORD lists inside site-packages (scripts
    outside it are left out: pip writes them again from the entry points);
    the RECORD is written anew. For the pure-Python toolchain only.
    """
    site = dist_info.parent
    tags = [line.split(":", 1)[1].strip()
            for line in (dist_info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")]
    stem = dist_info.name.removesuffix(".dist-info")
    wheel = dest / f"{stem}-{tags[0]}.whl"
    installer_files = {f"{dist_info.name}/{name}" for name in
                       ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for row in csv.reader((dist_info / "RECORD").read_text().splitlines()):
            name = row[0]
            if (name.startswith(("..", "/")) or "__pycache__" in name
                    or name in installer_files):
                continue
            data = (site / name).read_bytes()
            archive.writestr(name, data)
            record.append(f"{name},{record_hash(data)},{len(data)}")
        record.append(f"{dist_info.name}/RECORD,,")
        archive.writestr(f"{dist_info.name}/RECORD", "\n".join(record) + "\n")
    return wheel


def write_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 index of ``wheels`` under ``root/simple``; return its URL."""
    simple = root / "simple"
    simple.mkdir(parents=True)
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        projects.setdefault(project, []).append(wheel)
    for project, files in projects.items():
        (simple / project).mkdir()
        links = "".join(
            f'<a href="{html.escape(file.as_uri())}">{html.escape(file.name)}</a>\n'
            for file in files)
        (simple / project / "index.html").write_text(
            f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")
    return simple.as_uri()


def checkout_eggs_directory() -> str:
    """The eggs directory the checkout's own build uses (with buildout's
    ``v5``), as recorded in its ``.installed.cfg``."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(CHECKOUT / ".installed.cfg")
    for section in parser.sections():
        if parser.has_option(section, "eggs-directory"):
            return parser.get(section, "eggs-directory")
    raise AssertionError("the checkout's .installed.cfg names no eggs directory")


def pip_build_isolation(conf: Path) -> str:
    """What the toolchain's pip makes of a pip.conf for ``pip install``."""
    code = ("from pip._internal.commands import create_command; "
            "options, _ = create_command('install').parse_args([]); "
            "print(bool(options.build_isolation))")
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(conf)
    result = subprocess.run([str(toolchain_python()), "-c", code], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@unittest.skipIf(CHECKOUT is None or not toolchain_python().exists(),
                 "no bootstrapped checkout")
class PipConfTests(unittest.TestCase):
    """The pip.conf bootstrap.py writes into .venv, as pip reads it."""

    def test_pip_conf_turns_build_isolation_off(self):
        # Isolated builds fetch setuptools from the index for each develop
        # egg on every buildout run: a rebuild would need the network.
        with tempfile.TemporaryDirectory() as tmp:
            conf = Path(tmp) / "pip.conf"
            conf.write_text(load_bootstrap().PIP_CONF)
            self.assertEqual(pip_build_isolation(conf), "False")

    def test_toolchain_option_prints_the_pins(self):
        result = subprocess.run(
            [sys.executable, str(CHECKOUT / "bootstrap.py"), "--toolchain"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        pins = [f"{name}=={version}"
                for name, version in load_bootstrap().TOOLCHAIN.items()]
        self.assertEqual(result.stdout.split(), pins)


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / ".installed.cfg").exists(),
                 "no bootstrapped checkout")
class BootstrapOfflineTests(unittest.TestCase):
    """bootstrap.py in a copy of the checkout, local indexes, no network."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="zeo-bootstrap-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.refuser = closed_port()
        self.addCleanup(self.refuser.close)
        self.clone = self.tmp / "checkout"
        self.empty_index = write_index(self.tmp / "empty", [])

    def bootstrap(self, *args: str, **pip: str) -> subprocess.CompletedProcess:
        env = offline_env(self.tmp / "home", self.refuser.getsockname()[1], **pip)
        result = subprocess.run(
            [sys.executable, "bootstrap.py", *args], cwd=self.clone, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=RUN_TIMEOUT)
        # Nothing was asked of the network: pip retries a refused connection.
        self.assertNotIn("Retrying", result.stdout)
        self.assertNotIn(f"127.0.0.1:{self.refuser.getsockname()[1]}", result.stdout)
        return result

    def write_default_cfg(self, *, index: str, eggs_directory: str) -> None:
        """``~/.buildout/default.cfg`` in the temporary HOME. The eggs
        directory is given whole (``eggs-directory-version`` empty)."""
        home = self.tmp / "home" / ".buildout"
        home.mkdir(parents=True, exist_ok=True)
        (home / "default.cfg").write_text(
            f"[buildout]\nindex = {index}\neggs-directory = {eggs_directory}\n"
            "eggs-directory-version =\n")

    def test_empty_index_fails_at_once_and_names_it(self):
        copy_checkout(self.clone)
        result = self.bootstrap(f"buildout:index={self.empty_index}",
                                index_url=self.empty_index)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        # bootstrap says where pip looks, and pip's error names that place.
        self.assertIn(f"pip installs the toolchain from: "
                      f":env:.index-url='{self.empty_index}'", result.stdout)
        self.assertIn(f"'{self.empty_index}/pip/'", result.stdout)
        self.assertIn("No matching distribution found for pip==", result.stdout)
        self.assertFalse((self.clone / "bin" / "buildout").exists())

    def test_second_build_needs_no_network_and_changes_nothing(self):
        copy_checkout(self.clone)
        site_packages = next((CHECKOUT / ".venv" / "lib").glob("python*/site-packages"))
        wheels_dir = self.tmp / "wheels"
        wheels_dir.mkdir()
        for name, version in load_bootstrap().TOOLCHAIN.items():
            stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
            repack_wheel(site_packages / f"{stem}.dist-info", wheels_dir)
        # As docs/development.rst has it: the buildout's settings in
        # ~/.buildout/default.cfg, the same for every run. Its index is
        # empty: every egg must come from the shared eggs directory.
        self.write_default_cfg(index=self.empty_index,
                               eggs_directory=checkout_eggs_directory())

        # The toolchain from a directory of wheels, pip asking no index, as
        # the docs have it for a fresh checkout offline.
        first = self.bootstrap(no_index="1", find_links=str(wheels_dir))
        self.assertEqual(first.returncode, 0, first.stdout)
        self.assertIn(f":env:.find-links='{wheels_dir}'", first.stdout)
        self.assertTrue((self.clone / "bin" / "test").exists(), first.stdout)

        # pip's index is empty now too: nothing may be fetched at all.
        second = self.bootstrap(index_url=self.empty_index)
        self.assertEqual(second.returncode, 0, second.stdout)
        for word in ("creating the toolchain", "Installing", "Uninstalling",
                     "Getting distribution", "Generated", "arning", "rror"):
            self.assertNotIn(word, second.stdout)
        self.assertIn("Updating test.", second.stdout)

    def test_buildout_looks_for_a_missing_egg_in_its_index_only(self):
        # The checkout's own bin/buildout on a buildout of one part in the
        # temporary directory, with ~/.buildout/default.cfg as above but an
        # empty eggs directory: the recipe's egg is looked up in the index
        # configured there, and nowhere else.
        self.write_default_cfg(index=self.empty_index,
                               eggs_directory=str(self.tmp / "eggs"))
        cfg = self.tmp / "one-part.cfg"
        cfg.write_text("[buildout]\nparts = one\n\n"
                       "[one]\nrecipe = zc.recipe.egg\neggs = zc.lockfile\n")
        env = offline_env(self.tmp / "home", self.refuser.getsockname()[1])
        result = subprocess.run(
            [str(CHECKOUT / "bin" / "buildout"), "-N", "-c", str(cfg)],
            cwd=self.tmp, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=RUN_TIMEOUT)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        empty = self.empty_index.removeprefix("file://")
        self.assertIn(f"Not found: {empty}/zc-recipe-egg/", result.stdout)
        self.assertIn("Couldn't find a distribution for 'zc.recipe.egg", result.stdout)
        self.assertNotIn(f"127.0.0.1:{self.refuser.getsockname()[1]}", result.stdout)
