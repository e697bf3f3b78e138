"""zeoctl under zdaemon, for real: start, status, restart, stop."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from zeo.server.tests.rawclient import connect_when_ready
from zeo.server.tests.test_layout import CHECKOUT
from zeo.server.tests.test_runzeo import free_port

Z64 = b"\0" * 8


class ZeoctlTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-zeoctl-")
        self.port = free_port()
        self.config = os.path.join(self.directory, "zeo.conf")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{self.port}
                </zeo>
                <filestorage>
                  path {self.directory}/Data.fs
                </filestorage>
                <eventlog>
                  <logfile>
                    path {self.directory}/zeo.log
                  </logfile>
                </eventlog>
                """))

    def tearDown(self):
        self.zeoctl("stop")
        shutil.rmtree(self.directory)

    def command(self):
        script = CHECKOUT / "bin" / "zeoctl" if CHECKOUT else None
        if script is not None and script.exists():
            return [str(script)]
        return [sys.executable, "-m", "zeo.server.zeoctl"]

    def zeoctl(self, action):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        env.pop("DAEMON_MANAGER_MODE", None)
        return subprocess.run(
            self.command() + ["-C", self.config, action], env=env, cwd=self.directory,
            capture_output=True, text=True, timeout=120)

    def connect(self):
        return connect_when_ready(("127.0.0.1", self.port))

    def test_start_status_restart_stop(self):
        started = self.zeoctl("start")
        self.assertEqual(started.returncode, 0, started.stderr)
        self.assertIn("daemon process started", started.stdout)
        client = self.connect()
        oid = client.call("new_oids", 1)[0]
        tid = client.commit(1, [(oid, Z64, b"daemon")])
        client.close()

        status = self.zeoctl("status")
        self.assertIn("program running", status.stdout)

        self.assertEqual(self.zeoctl("restart").returncode, 0)
        client = self.connect()
        self.assertEqual(client.call("loadBefore", oid, b"\x7f" + b"\xff" * 7),
                         (b"daemon", tid, None))
        client.close()

        stopped = self.zeoctl("stop")
        self.assertIn("daemon process stopped", stopped.stdout)
        self.assertIn("daemon manager not running", self.zeoctl("status").stdout)
        with open(os.path.join(self.directory, "zeo.log")) as log:
            self.assertIn("serving storage '1'", log.read())

    def test_runner_section_without_program(self):
        # The docs promise that a <runner> section naming no program runs
        # runzeo -C with the same file; zdaemon's own section type requires
        # "program" and zeoctl used to die with a ZConfig traceback.
        with open(self.config, "a") as f:
            f.write(textwrap.dedent(f"""\
                <runner>
                  transcript {self.directory}/transcript.log
                </runner>
                """))
        started = self.zeoctl("start")
        self.assertEqual(started.returncode, 0, started.stderr)
        self.assertNotIn("Traceback", started.stderr)
        client = self.connect()
        self.assertEqual(len(client.call("new_oids", 1)), 1)
        client.close()
        self.assertIn("program running", self.zeoctl("status").stdout)
        self.assertIn("daemon process stopped", self.zeoctl("stop").stdout)
        self.assertTrue(os.path.exists(os.path.join(self.directory, "transcript.log")))


if __name__ == "__main__":
    unittest.main()
