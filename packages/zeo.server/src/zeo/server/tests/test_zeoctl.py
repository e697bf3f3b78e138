"""zeoctl under zdaemon, for real: start, status, restart, stop."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from zeo.server.tests.rawclient import connect_when_ready
from zeo.server import zeoctl
from zeo.server.tests.support import CHECKOUT, child_env
from zeo.server.tests.support import free_port

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
        env = child_env()
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


class HelpTests(unittest.TestCase):
    """``zeoctl --help`` and ``bin/zeo --help`` describe zeo's commands."""

    def run_script(self, command, *args):
        env = child_env()
        env.pop("DAEMON_MANAGER_MODE", None)
        return subprocess.run(command + list(args), env=env, capture_output=True,
                              text=True, timeout=120)

    def check_help(self, text, program):
        self.assertNotIn("zdctl", text)
        self.assertTrue(text.startswith(f"{program} -- run a zeo storage server"), text)
        for action in ("start", "stop", "restart", "status", "fg", "logtail", "logreopen"):
            self.assertRegex(text, rf"(?m)^  {action}\b")
        # Every option's entry (up to the next option) says its default,
        # except those that are actions or have none.
        entries = re.split(r"(?m)^  (?=-)", text.split("Options", 1)[1])[1:]
        self.assertGreater(len(entries), 10)
        for entry in entries:
            if not entry.startswith(("-C/", "-h/", "--version", "-X ")):
                self.assertIn("default", entry, entry)
        for unit in ("-T/--start-timeout SECONDS", "-b/--backoff-limit SECONDS",
                     "(default: 300 seconds)", "(default: 10 seconds)"):
            self.assertIn(unit, text)

    def test_zeoctl_help(self):
        result = self.run_script([sys.executable, "-m", "zeo.server.zeoctl"], "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.check_help(result.stdout, "zeoctl")
        self.assertEqual(result.stdout, zeoctl.HELP.replace("%s", "zeoctl"))

    @unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "zeo").exists(),
                     "no buildout scripts")
    def test_bin_zeo_help_and_version(self):
        from zeo.server.runzeo import version
        result = self.run_script([str(CHECKOUT / "bin" / "zeo")], "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.check_help(result.stdout, "zeo")
        result = self.run_script([str(CHECKOUT / "bin" / "zeo")], "--version")
        self.assertEqual(result.stdout.strip(), f"zeo.server {version()}")

    def test_logtail_follows_the_event_log_by_default(self):
        directory = tempfile.mkdtemp(prefix="zeo-zeoctl-")
        self.addCleanup(shutil.rmtree, directory)
        config = os.path.join(directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{free_port()}
                </zeo>
                <filestorage>
                  path {directory}/Data.fs
                </filestorage>
                <eventlog>
                  <logfile>
                    path {directory}/zeo.log
                  </logfile>
                </eventlog>
                """))
        argv = zeoctl.arguments(["-C", config, "logtail"])
        self.assertEqual(argv[argv.index("-l") + 1], os.path.join(directory, "zeo.log"))
        argv = zeoctl.arguments(["-C", config, "-l", "other.log", "logtail"])
        self.assertEqual(argv.count("-l"), 1)


if __name__ == "__main__":
    unittest.main()
