"""scripts/benchmark.py end to end: both servers, a client each, a report.

Runs ``bin/py scripts/benchmark.py --quick --only ping --repeat 1`` as a
subprocess and checks that the JSON report has a measurement for ours and
for the reference and their ratio, the loopback floor, and that the PNG
is a PNG.  Speed goals
are never asserted: this only proves the benchmark runs.  Skipped outside
a buildout checkout (no scripts/ next to packages/, or no bin/ with both
servers and interpreters).
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

# packages/zeo.server/src/zeo/server/tests/ -> the repository root.
REPO = Path(__file__).resolve().parents[6]
SCRIPT = REPO / "scripts" / "benchmark.py"
BIN = REPO / "bin"
NEEDED = ("py", "runzeo", "reference-py", "reference-runzeo")


def missing():
    if not SCRIPT.exists():
        return f"not in a checkout of the monorepo ({SCRIPT} is missing)"
    for name in NEEDED:
        if not (BIN / name).exists():
            return f"not a buildout checkout ({BIN / name} is missing)"
    return None


@unittest.skipIf(missing(), missing() or "")
class BenchmarkScriptTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-benchmark-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_quick_ping_both_sides(self):
        report_path = os.path.join(self.directory, "report.json")
        plot_path = os.path.join(self.directory, "report.png")
        done = subprocess.run(
            [str(BIN / "py"), str(SCRIPT), "--quick", "--only", "ping",
             "--repeat", "1", "--silent",
             "--json", report_path, "--plot", plot_path,
             "--tmpdir", self.directory],
            capture_output=True, text=True, timeout=120, cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        with open(report_path) as f:
            report = json.load(f)
        self.assertTrue(report["quick"])
        self.assertEqual(report["repeat"], 1)
        results = {r["name"]: r for r in report["results"]}
        self.assertEqual(sorted(results), ["ping", "server_cpu"])
        ping = results["ping"]
        self.assertEqual(ping["errors"], {})
        self.assertGreater(ping["ours"], 0)
        self.assertGreater(ping["zeo"], 0)
        self.assertAlmostEqual(ping["ratio"], ping["ours"] / ping["zeo"])
        self.assertIn(ping["met"], (True, False))
        self.assertEqual(len(ping["runs"]["ours"]), 1)
        self.assertEqual(len(ping["runs"]["zeo"]), 1)
        self.assertGreaterEqual(results["server_cpu"]["ours"], 0)
        # The floor: a loopback echo, blocking and asyncio.
        for key in ("blocking", "blocking_server_cpu", "asyncio",
                    "asyncio_server_blocking_client",
                    "asyncio_server_cpu", "asyncio_buffered",
                    "asyncio_buffered_server_cpu"):
            self.assertGreater(report["floor_us"][key], 0)
        self.assertIn("ping latency", done.stdout)
        self.assertIn("ours/ZEO", done.stdout)
        with open(plot_path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        # The temporary directory was cleaned up: only our two files remain.
        self.assertEqual(sorted(os.listdir(self.directory)),
                         ["report.json", "report.png"])
