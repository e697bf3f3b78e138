"""docs/migrating.rst names real things, on both sides.

Every ``ZEO...`` name the page mentions must exist in the reference ZEO 6.2
and every ``zeo...`` name in ours; every environment variable ZEO 6.2 reads
must be in the table; the keys the page tells operators to remove before
going back to ZEO must be all of our own ``<zeo>`` keys. The page is found
as the doctests find theirs; outside a checkout there is nothing to check.
"""

import importlib
import re
import unittest
from typing import Any
from pathlib import Path

from zeo.protocol.tests.doctests import find_docs

#: docs/ (a Path), or None outside a checkout.
DOCS: Any = find_docs()

# ``ZEO.x.y``, ``zeo.x.y`` inside an inline literal (``...``), up to a "(".
NAME = re.compile(r"\b((?:ZEO|zeo)(?:\.[A-Za-z_]\w*)+)")
FILE_SUFFIXES = {"conf", "fs", "log", "zec"}


def page() -> str:
    return (DOCS / "migrating.rst").read_text()


def literals(text: str) -> list[str]:
    return re.findall(r"``(.+?)``", text, re.S)


def resolve(dotted: str):
    """Import the longest importable module prefix, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(dotted)


def zeo_keys(schema: Path) -> set[str]:
    text = schema.read_text()
    zeo = text[text.index('<sectiontype name="zeo"'):]
    zeo = zeo[:zeo.index("</sectiontype>")]
    return set(re.findall(r'<key name="([^"]+)"', zeo))


@unittest.skipIf(DOCS is None, "not in a checkout: no docs/")
class MigratingPageTests(unittest.TestCase):

    def test_every_name_exists_on_its_side(self):
        names = {match for literal in literals(page())
                 for match in NAME.findall(literal)
                 if match.rsplit(".", 1)[1] not in FILE_SUFFIXES}   # not zeo.conf
        self.assertIn("ZEO.ClientStorage.ClientStorage", names)
        self.assertIn("zeo.client.ClientStorage", names)
        missing = []
        for name in sorted(names):
            try:
                resolve(name)
            except (ImportError, AttributeError) as error:
                missing.append(f"{name}: {error}")
        self.assertEqual(missing, [], "docs/migrating.rst names what does not exist")

    def test_every_environment_variable_zeo_reads_is_in_the_table(self):
        import ZEO
        package = Path(ZEO.__file__).parent
        read = set()
        for source in package.rglob("*.py"):
            if "tests" in source.parts or source.name == "_forker.py":
                continue
            read.update(re.findall(r"environ\.get\(\s*['\"](\w+)", source.read_text()))
        self.assertIn("ZEO_MSGPACK", read)
        text = page()
        self.assertEqual(sorted(v for v in read if f"``{v}``" not in text), [])

    def test_going_back_names_every_key_of_our_own(self):
        import ZEO

        import zeo.server
        ours = zeo_keys(Path(zeo.server.__file__).parent / "server.xml")
        theirs = zeo_keys(Path(ZEO.__file__).parent / "server.xml")
        text = page()
        going_back = text[text.index("Going back to ZEO 6"):]
        unnamed = sorted(key for key in ours - theirs
                         if f"``{key}``" not in going_back and not key.startswith("max-"))
        self.assertEqual(unnamed, [], "add these <zeo> keys to 'Going back to ZEO 6'"
                                      " in docs/migrating.rst")


if __name__ == "__main__":
    unittest.main()
