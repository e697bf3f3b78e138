"""runzeo as a real subprocess: start, serve, signals, configuration files."""

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from zeo.server.runzeo import UsageError, parse_address
from zeo.server.zconfig import load
from zeo.server.tests.rawclient import RawClient
from zeo.server.tests.support import child_env, free_port

Z64 = b"\0" * 8
MAXTID = b"\x7f" + b"\xff" * 7


class ParseAddressTests(unittest.TestCase):
    def test_forms(self):
        self.assertEqual(parse_address("8100"), ("", 8100))
        self.assertEqual(parse_address("127.0.0.1:8100"), ("127.0.0.1", 8100))
        self.assertEqual(parse_address("[::1]:8100"), ("::1", 8100))
        self.assertEqual(parse_address("var/zeo.sock"), "var/zeo.sock")
        for bad in ("host:port", "127.0.0.1:70000", "", ":", "[::1]8100"):
            with self.assertRaises(UsageError):
                parse_address(bad)

    def test_a_host_without_a_port_binds_a_free_port(self):
        # As the reference's runzeo does (ZConfig's socket-binding-address
        # leaves the port out and the server binds port 0).
        self.assertEqual(parse_address("127.0.0.1"), ("127.0.0.1", 0))
        self.assertEqual(parse_address("localhost"), ("localhost", 0))
        self.assertEqual(parse_address("localhost:"), ("localhost", 0))
        self.assertEqual(parse_address("[::1]"), ("::1", 0))
        self.assertEqual(parse_address("::1"), ("::1", 0))


class RunzeoTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-runzeo-")
        self.processes = []

    def tearDown(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(30)
            process.stderr.close()
        shutil.rmtree(self.directory)

    def start(self, *args, preexec_fn=None):
        env = child_env()
        process = subprocess.Popen(
            [sys.executable, "-m", "zeo.server.runzeo", *args],
            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            cwd=self.directory, preexec_fn=preexec_fn)
        self.processes.append(process)
        return process

    def wait_serving(self, address, process):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.fail(f"runzeo exited: {process.stderr.read().decode()}")
            try:
                return RawClient(address)
            except OSError:
                time.sleep(0.05)
        self.fail("runzeo did not start serving")

    def stop(self, process, signum=signal.SIGTERM):
        process.send_signal(signum)
        return process.wait(30)

    def test_serve_a_file_storage_then_stop_cleanly_and_restart(self):
        port = free_port()
        path = os.path.join(self.directory, "var", "Data.fs")
        process = self.start("-a", f"127.0.0.1:{port}", "-f", path)
        client = self.wait_serving(("127.0.0.1", port), process)
        self.assertEqual(client.agreed.encoding, "Z")   # pickle by default, as ZEO
        oid = client.call("new_oids", 1)[0]
        tid = client.commit(1, [(oid, Z64, b"kept")])
        # An open transaction when the server is told to stop is aborted,
        # never half written.
        client.send("tpc_begin", 2, b"", b"", {}, None, " ")
        client.send("storea", oid, tid, b"never", 2)
        client.call("vote", 2)
        self.assertEqual(self.stop(process), 0)
        client.close()

        process = self.start("-a", f"127.0.0.1:{port}", "-f", path, "--msgpack")
        client = self.wait_serving(("127.0.0.1", port), process)
        self.assertEqual(client.agreed.encoding, "M")
        self.assertEqual(client.call("loadBefore", oid, MAXTID), (b"kept", tid, None))
        client.close()
        self.assertEqual(self.stop(process, signal.SIGHUP), 1)   # "restart me"

    def test_a_taken_address_is_refused_clearly(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            process = self.start("-a", f"127.0.0.1:{port}", "-f", "Data.fs")
            self.assertEqual(process.wait(30), 2)
            self.assertIn(b"already in use", process.stderr.read())

    def test_a_reference_configuration_file_runs_unchanged(self):
        port = free_port()
        config = os.path.join(self.directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{port}
                  invalidation-queue-size 1000
                  transaction-timeout 60
                  msgpack true
                </zeo>
                <filestorage 1>
                  path {self.directory}/Data.fs
                  blob-dir {self.directory}/blobs
                </filestorage>
                <eventlog>
                  <logfile>
                    path {self.directory}/zeo.log
                  </logfile>
                </eventlog>
                """))
        process = self.start("-C", config)
        client = self.wait_serving(("127.0.0.1", port), process)
        self.assertEqual(client.agreed.encoding, "M")
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"x")])
        client.close()
        # Log rotation: move the log away, SIGUSR2, and a new file appears.
        log = os.path.join(self.directory, "zeo.log")
        os.rename(log, log + ".1")
        process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not os.path.exists(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.stop(process), 0)
        with open(log) as f:
            self.assertIn("log files reopened", f.read())
        with open(log + ".1") as f:
            self.assertIn("serving storage '1'", f.read())

    def test_zeo_only_keys_and_the_asyncio_loop(self):
        port = free_port()
        config = os.path.join(self.directory, "zeo.conf")
        log = os.path.join(self.directory, "zeo.log")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{port}
                  event-loop asyncio
                  conflict-resolution-packages BTrees persistent ZODB myapp
                  max-output-buffer 200MB
                  max-frame-size 80MB
                  max-iterators 20
                  max-server-iterators 50
                  worker-threads 2
                  max-waiting-calls 10
                  max-history-entries 500
                </zeo>
                <filestorage 1>
                  path {self.directory}/Data.fs
                </filestorage>
                <eventlog>
                  <logfile>
                    path {log}
                  </logfile>
                </eventlog>
                """))
        settings = load(config)
        self.assertEqual(settings.config.event_loop, "asyncio")
        self.assertEqual(settings.config.conflict_resolution_packages,
                         ("BTrees", "persistent", "ZODB", "myapp"))
        self.assertEqual(settings.config.output_buffer_limit, 200 * 1024 * 1024)
        self.assertEqual(settings.config.limits.max_frame_size, 80 * 1024 * 1024)
        self.assertEqual(
            (settings.config.max_iterators, settings.config.max_server_iterators,
             settings.config.worker_threads, settings.config.max_waiting_calls,
             settings.config.max_history_entries), (20, 50, 2, 10, 500))
        process = self.start("-C", config)
        client = self.wait_serving(("127.0.0.1", port), process)
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"x")])
        client.close()
        self.assertEqual(self.stop(process), 0)
        with open(log) as f:
            self.assertIn("running on the asyncio event loop", f.read())

    def test_process_wide_limit_keys(self):
        config = os.path.join(self.directory, "zeo.conf")
        text = textwrap.dedent(f"""\
            <zeo>
              address 127.0.0.1:{free_port()}
              %s
            </zeo>
            <filestorage 1>
              path {self.directory}/Data.fs
            </filestorage>
            """)
        with open(config, "w") as f:
            f.write(text % textwrap.indent(textwrap.dedent("""\
                max-total-input-buffer 300MB
                max-total-output-buffer 2GB
                idle-timeout 600
                max-connections-per-address 50
                """), "  "))
        settings = load(config)
        self.assertEqual(settings.config.total_input_limit, 300 * 1024 * 1024)
        self.assertEqual(settings.config.total_output_limit, 2 * 1024 ** 3)
        self.assertEqual(settings.config.idle_timeout, 600.0)
        self.assertEqual(settings.config.max_connections_per_address, 50)
        # Absent: the defaults.
        with open(config, "w") as f:
            f.write(text % "")
        settings = load(config)
        self.assertIsNone(settings.config.max_total_input_buffer)
        self.assertIsNone(settings.config.max_total_output_buffer)
        self.assertEqual(settings.config.total_input_limit, 1 << 30)
        self.assertEqual(settings.config.total_output_limit, 1 << 30)
        self.assertIsNone(settings.config.idle_timeout)
        self.assertEqual(settings.config.max_connections_per_address, 1000)
        # Bad values are refused clearly.
        with open(config, "w") as f:
            f.write(text % "max-connections-per-address 0")
        with self.assertRaises(ValueError) as raised:
            load(config)
        self.assertIn("max_connections_per_address", str(raised.exception))

    def test_a_bad_event_loop_is_refused_clearly(self):
        config = os.path.join(self.directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{free_port()}
                  event-loop twisted
                </zeo>
                <filestorage 1>
                  path {self.directory}/Data.fs
                </filestorage>
                """))
        process = self.start("-C", config)
        self.assertEqual(process.wait(30), 2)
        self.assertIn(b"event_loop must be one of uvloop, asyncio", process.stderr.read())

    def start_with_file_limit(self, soft, hard, max_connections):
        """runzeo -C with *max_connections*, started with RLIMIT_NOFILE
        (*soft*, *hard*); its address and process, once it serves."""
        port = free_port()
        config = os.path.join(self.directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1:{port}
                  max-connections {max_connections}
                  max-server-iterators 100
                </zeo>
                <filestorage 1>
                  path {self.directory}/Data.fs
                </filestorage>
                """))

        def low_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        process = self.start("-C", config, preexec_fn=low_limit)
        self.wait_serving(("127.0.0.1", port), process).close()
        return process

    def open_file_limits(self, pid):
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
        raise AssertionError("no open-file limit in /proc")

    def test_the_soft_open_file_limit_is_raised_as_far_as_needed(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # 1000 connections + 100 iterators + the reserve fit under the hard limit.
        process = self.start_with_file_limit(256, min(hard, 4096), 1000)
        self.assertEqual(self.open_file_limits(process.pid), (1164, min(hard, 4096)))
        self.assertEqual(self.stop(process), 0)
        log = process.stderr.read().decode()
        self.assertIn("raised the soft open-file limit from 256 to 1164", log)
        self.assertNotIn("below the", log)

    def test_a_hard_limit_too_low_for_max_connections_is_a_warning(self):
        process = self.start_with_file_limit(256, 600, 10000)
        self.assertEqual(self.open_file_limits(process.pid), (600, 600))
        self.assertEqual(self.stop(process), 0)
        log = process.stderr.read().decode()
        self.assertIn("the open-file limit is 600 (hard limit 600), below the 10164"
                      " that max-connections (10000) plus max-server-iterators (100)", log)
        self.assertIn("to at least 10164, or lower max-connections", log)

    def bound_address(self, process):
        """The address runzeo says it serves on (its log line), as a pair."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stderr.readline().decode()
            if not line and process.poll() is not None:
                self.fail("runzeo exited before serving")
            match = re.search(r"serving storage '1' .* on ([0-9.]+):([0-9]+)", line)
            if match:
                return match.group(1), int(match.group(2))
        self.fail("runzeo did not say where it serves")

    def test_a_host_without_a_port_serves_on_a_free_port(self):
        path = os.path.join(self.directory, "Data.fs")
        process = self.start("-a", "127.0.0.1", "-f", path)
        address = self.bound_address(process)
        self.assertNotEqual(address[1], 0)
        client = self.wait_serving(address, process)
        self.assertEqual(len(client.call("new_oids", 1)), 1)
        client.close()
        self.assertEqual(self.stop(process), 0)

    def test_a_configured_host_without_a_port_serves_on_a_free_port(self):
        config = os.path.join(self.directory, "zeo.conf")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                <zeo>
                  address 127.0.0.1
                </zeo>
                <filestorage 1>
                  path {self.directory}/Data.fs
                </filestorage>
                """))
        self.assertEqual(load(config).address, ("127.0.0.1", 0))
        process = self.start("-C", config)
        address = self.bound_address(process)
        self.wait_serving(address, process).close()
        self.assertEqual(self.stop(process), 0)

    def test_version(self):
        from importlib.metadata import version
        result = subprocess.run(
            [sys.executable, "-m", "zeo.server.runzeo", "--version"],
            env=child_env(),
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), f"zeo.server {version('zeo.server')}")

    def test_help_gives_every_option_its_default(self):
        from zeo.server.runzeo import parser
        for action in parser()._actions:
            if action.dest not in ("help", "version", "configure", "filename"):
                self.assertIn("default", action.help, action.dest)
        self.assertIn("SECONDS", parser().format_help())
        result = subprocess.run(
            [sys.executable, "-m", "zeo.server.runzeo", "--help"],
            env=child_env(),
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("(default: 30 seconds)", result.stdout)
        self.assertIn("SIGHUP stops it with status 1", result.stdout)

    def test_usage_errors(self):
        process = self.start()
        self.assertEqual(process.wait(30), 2)
        self.assertIn(b"give a configuration file", process.stderr.read())


if __name__ == "__main__":
    unittest.main()
