#!/usr/bin/env python3
"""Set up the zeo development buildout from a fresh clone.

Run ``python3 bootstrap.py``. It

1. makes a toolchain virtual environment in ``.venv`` (only the build tools
   live there: pip, setuptools, wheel and zc.buildout, each pinned below);
2. turns off pip's build isolation inside that environment, so develop eggs
   rebuild in seconds, and without the network, instead of fetching
   setuptools from the index again on every run;
3. runs ``buildout bootstrap`` once to write ``bin/buildout``;
4. runs ``bin/buildout -N``, which installs every part of ``buildout.cfg``.

A re-run finds everything in place and only runs step 4, which changes
nothing when ``buildout.cfg`` did not change, and asks no index for
anything. Extra arguments are passed on to ``bin/buildout`` (for example
``python3 bootstrap.py -c other.cfg``); ``python3 bootstrap.py --toolchain``
only prints the toolchain's pins (to fetch them ahead of an offline build).

Where things come from is left to the tools' own settings, untouched: pip
(the toolchain) reads ``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``
and its pip.conf files; buildout (the eggs) reads ``index``, ``find-links``,
``download-cache`` and ``eggs-directory`` from ``~/.buildout/default.cfg``,
``buildout.cfg`` or the command line. docs/development.rst shows how.

Standard library only: this script runs before anything is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

#: The toolchain, pinned. Keep in step with ``[versions]`` in buildout.cfg.
TOOLCHAIN = {
    "pip": "26.3",
    "setuptools": "84.2.1",
    "wheel": "0.48.0",
    "zc.buildout": "6.0.1",
    # zc.buildout's own dependencies: pip would pick their newest releases,
    # the buildout then installs the versions pinned in versions.cfg as
    # eggs, and the next run, finding the venv's copies first, reinstalls
    # every part. The same pins in both places keep a re-run a no-op.
    "packaging": "26.3",
    "platformdirs": "4.14.7",
}

#: zc.buildout 6 needs at least this Python.
MINIMUM_PYTHON = (3, 10)

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
STAMP = VENV / "zeo-toolchain.txt"

#: pip's configuration inside ``.venv`` (its "site" file, read after the
#: user's and the machine's, so the index settings those give still apply).
#: Develop eggs build against the setuptools installed here instead of a
#: fresh isolated copy fetched from the index on every buildout run, which
#: would need the network on every build. Mind pip's inverted booleans: a
#: config value is the value of the option's *destination*
#: (``build_isolation``), so ``no-build-isolation = false`` is what turns
#: isolation off; ``true`` leaves it on. test_bootstrap asks pip.
PIP_CONF = """\
# Written by bootstrap.py: develop eggs build against the setuptools
# installed here instead of a fresh isolated copy on every buildout run.
# "false" is right: pip reads this as build_isolation = false.
[global]
no-build-isolation = false
"""


def say(message: str) -> None:
    print(f"bootstrap: {message}", flush=True)


#: Warnings buildout prints on every run that say nothing about this
#: checkout: pkg_resources notes that the namespace packages ``zc`` and
#: ``zope`` (zc.buildout's own) were imported before eggs adding to them
#: were put on the path, which is how buildout always works.
QUIET_WARNINGS = [
    f"ignore:Module {namespace} was already imported from None:UserWarning"
    for namespace in ("zc", "zope")
]


def run(*command: str | os.PathLike[str], buildout: bool = False) -> None:
    """Run *command* in the checkout. For the *buildout* run: without the
    warnings in `QUIET_WARNINGS`, and with a fixed hash seed -- buildout
    orders the eggs of a part with extras (``zeo.server [monitor, ...]``)
    by iterating a set, so with Python's random seed a re-run rewrote
    ``bin/runzeo`` and its siblings with the same eggs in another order."""
    say(" ".join(str(part) for part in command))
    env = None
    if buildout:
        env = dict(os.environ)
        env["PYTHONWARNINGS"] = ",".join(
            filter(None, [env.get("PYTHONWARNINGS", ""), *QUIET_WARNINGS]))
        env["PYTHONHASHSEED"] = "0"
    subprocess.run([str(part) for part in command], check=True, cwd=HERE, env=env)


def wanted_toolchain() -> str:
    return "\n".join(f"{name}=={version}" for name, version in TOOLCHAIN.items())


#: The pip settings that say where distributions come from.
PIP_SOURCE_KEYS = ("index-url", "extra-index-url", "find-links", "no-index")


def pip_sources(python: Path) -> list[str]:
    """Where pip will look, as its own configuration says (``pip config list``).

    bootstrap.py sets none of these: pip reads them from ``PIP_INDEX_URL``,
    ``PIP_FIND_LINKS``, ``PIP_NO_INDEX`` and its configuration files. An
    empty list means pip's default, PyPI.
    """
    listed = subprocess.run(
        [str(python), "-m", "pip", "config", "list"],
        capture_output=True, text=True, check=False)
    sources = []
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.rpartition(".")[2] in PIP_SOURCE_KEYS and value.strip("'\""):
            sources.append(line)
    return sources


def make_toolchain() -> Path:
    """Create or refresh ``.venv``; return its python."""
    python = VENV / "bin" / "python"
    if STAMP.exists() and python.exists() and STAMP.read_text() == wanted_toolchain():
        write_pip_conf()
        return python
    say(f"creating the toolchain environment in {VENV}")
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    write_pip_conf()
    sources = pip_sources(python) or ["PyPI (pip's default)"]
    say("pip installs the toolchain from: " + "; ".join(sources))
    pins = [f"{name}=={version}" for name, version in TOOLCHAIN.items()]
    # pip itself first: the one a fresh venv ships is too old for buildout 6.
    run(python, "-m", "pip", "install", "--quiet", pins[0])
    run(python, "-m", "pip", "install", "--quiet", *pins[1:])
    STAMP.write_text(wanted_toolchain())
    return python


def write_pip_conf() -> None:
    """Write ``.venv/pip.conf`` unless it already says what PIP_CONF says."""
    conf = VENV / "pip.conf"
    if not conf.exists() or conf.read_text() != PIP_CONF:
        conf.write_text(PIP_CONF)


def remove_stale_metadata() -> None:
    """Remove ``packages/*/src/*.egg-info`` that builds with pip's build
    isolation on left behind: the develop eggs' metadata now lives in
    ``develop-eggs``, and a stale copy beside the code hides new extras."""
    for stale in sorted(HERE.glob("packages/*/src/*.egg-info")):
        say(f"removing stale metadata {stale.relative_to(HERE)}")
        shutil.rmtree(stale)


def main(argv: list[str]) -> int:
    if argv == ["--toolchain"]:
        # For fetching the toolchain ahead: pip download -d DIR $(... --toolchain)
        print(wanted_toolchain())
        return 0
    if sys.version_info < MINIMUM_PYTHON:
        wanted = ".".join(map(str, MINIMUM_PYTHON))
        say(f"Python {wanted} or newer is needed; this is {sys.version.split()[0]}")
        return 2
    make_toolchain()
    remove_stale_metadata()
    buildout = HERE / "bin" / "buildout"
    if not buildout.exists():
        run(VENV / "bin" / "buildout", "bootstrap")
    # -N: never look for newer versions; every version is pinned anyway.
    run(buildout, "-N", *argv, buildout=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except subprocess.CalledProcessError as error:
        say(f"failed: {error}")
        sys.exit(error.returncode or 1)
