"""The server announces pickle (``Z5``) unless told otherwise, as ZEO's does.

msgpack is an optional extra of ZEO (Plone installs ZEO without it), and a
ZEO client answers with whatever encoding the server announces: a server
that announced ``M5`` by default locked such clients out ("import of
msgpack halted", then ``ClientDisconnected``). ``M5`` stays one setting
away: ``ServerConfig(msgpack=True)``, ``msgpack true`` in ``<zeo>``,
``runzeo --msgpack``.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

import zeo.server
from zeo.server.config import ServerConfig
from zeo.server.runzeo import build, parser
from zeo.server.zconfig import load
from zeo.server.tests.support import child_env

# A reference ZEO 6.2 client process in which msgpack cannot be imported:
# it commits through one client and reads back through a fresh one.
REFERENCE_CLIENT_WITHOUT_MSGPACK = textwrap.dedent("""\
    import sys
    sys.modules["msgpack"] = None          # as in a ZEO installed without the extra
    try:
        import msgpack
    except ImportError:
        pass
    else:
        raise SystemExit("msgpack is still importable")
    import transaction
    import ZEO
    address = (sys.argv[1], int(sys.argv[2]))
    db = ZEO.DB(address, wait_timeout=10)
    with db.transaction() as connection:
        connection.root()["greeting"] = "hello from ZEO without msgpack"
    db.close()
    db = ZEO.DB(address, wait_timeout=10)
    with db.transaction() as connection:
        print(connection.root()["greeting"])
    db.close()
    """)


class DefaultEncodingTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-encoding-")
        self.addCleanup(shutil.rmtree, self.directory)

    def test_a_reference_client_without_msgpack_commits_and_reads(self):
        address, stop = zeo.server.server(path=os.path.join(self.directory, "Data.fs"))
        self.addCleanup(stop)
        env = child_env()
        result = subprocess.run(
            [sys.executable, "-c", REFERENCE_CLIENT_WITHOUT_MSGPACK, *map(str, address)],
            capture_output=True, text=True, timeout=120, env=env, cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertEqual(result.stdout.strip(), "hello from ZEO without msgpack")

    def test_the_defaults_say_pickle_and_msgpack_is_one_setting_away(self):
        self.assertEqual(ServerConfig().encoding, "Z")
        self.assertEqual(ServerConfig(msgpack=True).encoding, "M")
        self.assertIsNone(parser().parse_args([]).msgpack)       # ServerConfig decides
        self.assertIs(parser().parse_args(["--msgpack"]).msgpack, True)
        self.assertIs(parser().parse_args(["--pickle"]).msgpack, False)   # still accepted

    def test_zeo_section_default_and_key(self):
        config = os.path.join(self.directory, "zeo.conf")
        text = textwrap.dedent(f"""\
            <zeo>
              address 127.0.0.1:0
              %s
            </zeo>
            <filestorage 1>
              path {self.directory}/Data.fs
            </filestorage>
            """)
        for line, encoding in (("", "Z"), ("msgpack true", "M"), ("msgpack false", "Z")):
            with open(config, "w") as f:
                f.write(text % line)
            self.assertEqual(load(config).config.encoding, encoding, line)
        # runzeo's flags override the file, as --read-only does.
        with open(config, "w") as f:
            f.write(text % "msgpack true")
        for flags, encoding in (([], "M"), (["--pickle"], "Z")):
            plan = build(parser().parse_args(["-C", config, *flags]))
            for storage in plan.storages.values():
                storage.close()
            self.assertEqual(plan.config.encoding, encoding, flags)
        with open(config, "w") as f:
            f.write(text % "")
        plan = build(parser().parse_args(["-C", config, "--msgpack"]))
        for storage in plan.storages.values():
            storage.close()
        self.assertEqual(plan.config.encoding, "M")


if __name__ == "__main__":
    unittest.main()
