"""scripts/benchmark.py end to end: both servers, a client each, a report.

Runs ``bin/py scripts/benchmark.py --quick --only ping --repeat 1`` as a
subprocess and checks that the JSON report has a measurement for ours and
for the reference and their ratio in each encoding (both servers
announcing pickle ``Z5``, then msgpack ``M5``), the loopback floor, and
that the PNG is a PNG.  Speed goals
are never asserted: this only proves the benchmark runs.  Skipped outside
a buildout checkout (no scripts/ next to packages/, or no bin/ with both
servers and interpreters).

`ScaleOutScriptTests` runs the scale-out set (``--scaleout``: fronts over
RelStorage on a PostgreSQL the benchmark starts itself) with tiny sizes;
`ScaleOutPartsTests` checks its goals and table on made-up measurements.

`RunnerPartsTests` checks the runner's own logic (``scripts/bench_runner``:
goals, the encodings planned, the table, the PNG) on made-up reports, in
process.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib
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
        self.assertEqual(report["encoding"], "both")
        results = {(r["name"], r["encoding"]): r for r in report["results"]}
        self.assertEqual(sorted(results), [("ping", "M5"), ("ping", "Z5"),
                                           ("server_cpu", "M5"), ("server_cpu", "Z5")])
        for encoding in ("Z5", "M5"):
            ping = results["ping", encoding]
            self.assertEqual(ping["errors"], {})
            self.assertGreater(ping["ours"], 0)
            self.assertGreater(ping["zeo"], 0)
            self.assertAlmostEqual(ping["ratio"], ping["ours"] / ping["zeo"])
            self.assertIn(ping["met"], (True, False))
            self.assertEqual(len(ping["runs"]["ours"]), 1)
            self.assertEqual(len(ping["runs"]["zeo"]), 1)
            self.assertGreaterEqual(results["server_cpu", encoding]["ours"], 0)
            # Each latency beside the floor of the same run.
            self.assertEqual(ping["floor"], report["floor_us"]["blocking"])
            self.assertAlmostEqual(ping["floor_ratio"], ping["ours"] / ping["floor"])
            self.assertEqual(results["server_cpu", encoding]["floor"],
                             report["floor_us"]["uvloop_buffered_server_cpu"])
            # Both servers announced what was asked of them.
            for kind in ("ours", "zeo"):
                raw, = report["details"][f"ping {encoding}"][kind]
                self.assertTrue(raw["greeting"].startswith(encoding), raw["greeting"])
        # The floor: a loopback echo, blocking and asyncio.
        for key in ("blocking", "blocking_server_cpu", "asyncio",
                    "asyncio_server_blocking_client",
                    "asyncio_server_cpu", "asyncio_buffered",
                    "asyncio_buffered_server_cpu"):
            self.assertGreater(report["floor_us"][key], 0)
        self.assertIn("ping latency", done.stdout)
        self.assertIn("ours/ZEO", done.stdout)
        self.assertIn("ours/floor", done.stdout)
        with open(plot_path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        # The temporary directory was cleaned up: only our two files remain.
        self.assertEqual(sorted(os.listdir(self.directory)),
                         ["report.json", "report.png"])


@unittest.skipIf(missing(), missing() or "")
class ScaleOutScriptTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-benchmark-test-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def test_tiny_scaleout_set(self):
        report_path = os.path.join(self.directory, "report.json")
        sizes = ("objects=100", "commit1=20", "scale_clients=3", "scale_seconds=0.5",
                 "visibility_commits=5", "visibility_pause=0.01")
        done = subprocess.run(
            [str(BIN / "py"), str(SCRIPT), "--scaleout", "--quick", "--repeat", "1",
             "--silent", "--json", report_path, "--tmpdir", self.directory,
             *(f"--size={size}" for size in sizes)],
            capture_output=True, text=True, timeout=300, cwd=self.directory)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        with open(report_path) as f:
            report = json.load(f)
        self.assertTrue(report["scaleout"])
        self.assertEqual(report["sizes"]["objects"], 100)
        rows = {r["name"]: r for r in report["results"]}
        self.assertEqual(list(rows), [
            "commit1", "cold", "aggregate1", "aggregate2", "aggregate3",
            "visibility_notify_median", "visibility_notify_p99",
            "visibility_notify_median_from_start",
            "visibility_poll_median", "visibility_poll_p99",
            "visibility_poll_median_from_start", "lost"])
        for row in rows.values():
            self.assertEqual(row["errors"], {}, row["name"])
        # Side by side: a front, RelStorage directly, our FileStorage server.
        for name in ("commit1", "cold"):
            values = rows[name]["values"]
            self.assertEqual(sorted(values), ["direct", "filestorage", "front"])
            self.assertTrue(all(v > 0 for v in values.values()), values)
            self.assertAlmostEqual(rows[name]["ratio"], values["front"] / values["direct"])
        self.assertIn(rows["commit1"]["met"], (True, False))
        for count in (1, 2, 3):
            self.assertGreater(rows[f"aggregate{count}"]["values"]["front"], 0)
        for mode in ("notify", "poll"):
            self.assertEqual(len(report["latencies_ms"][mode]), 5)
            self.assertIsNotNone(rows[f"visibility_{mode}_p99"]["values"]["front"])
        self.assertIn(rows["visibility_notify_median"]["met"], (True, False))
        self.assertIsNone(rows["visibility_poll_median"]["met"])   # no goal
        # Every commit acknowledged to the clients was read back.
        checks = [raw["verify"] for count in (1, 2, 3)
                  for raw in report["details"][f"aggregate {count} fronts"]]
        self.assertEqual(len(checks), 3)
        self.assertTrue(all(c["acknowledged"] > 0 for c in checks), checks)
        self.assertEqual(rows["lost"]["values"]["front"], 0)
        self.assertIs(rows["lost"]["met"], True)
        self.assertIn("front/direct", done.stdout)
        self.assertIn("visibility, NOTIFY, p99", done.stdout)
        # Its temporary directory is gone: only the report remains.
        self.assertEqual(os.listdir(self.directory), ["report.json"])


def import_runner():
    """The ``bench_runner`` package of scripts/ (not an installed one)."""
    scripts = str(REPO / "scripts")
    sys.path.insert(0, scripts)
    try:
        from bench_runner import png, report, scaleout, scenarios
    finally:
        sys.path.remove(scripts)
    return png, report, scenarios, scaleout


def read_png(data):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        crc, = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        position += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + width * 3
    assert len(raw) == stride * height
    rows = [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]
    assert all(raw[y * stride] == 0 for y in range(height))   # no filter
    return width, height, rows


@unittest.skipIf(not SCRIPT.exists(), f"no {SCRIPT}")
class RunnerPartsTests(unittest.TestCase):

    def setUp(self):
        self.png, self.report, self.scenarios, _ = import_runner()
        self.metrics = {m.name: m for s in self.scenarios.SCENARIOS
                        for m in s.metrics}

    FLOOR = {"blocking": 100.0, "uvloop_buffered_server_cpu": 40.0}

    def result(self, name, ours, zeo):
        metric = self.metrics[name]
        floor = self.FLOOR.get(metric.floor_key) if metric.floor_key else None
        return {"name": name, "title": metric.title, "unit": metric.unit,
                "encoding": "Z5",
                "ours": ours, "zeo": zeo,
                "ratio": ours / zeo if ours is not None and zeo else None,
                "floor": floor,
                "floor_ratio": ours / floor if ours is not None and floor else None,
                "goal_text": metric.goal_text(),
                "met": metric.met(ours, zeo, self.FLOOR),
                "errors": {}}

    def test_goals(self):
        m = self.metrics
        floor = self.FLOOR
        # ping: at most 1.15x the blocking echo's round trip of the same
        # run, whatever ZEO does; the server's CPU per ping at most 1.1x
        # the uvloop echo server's.
        self.assertIs(m["ping"].met(115, 300, floor), True)
        self.assertIs(m["ping"].met(116, 300, floor), False)
        self.assertEqual(m["ping"].goal_text(), "<= 1.15x floor")
        self.assertIs(m["server_cpu"].met(44, 100, floor), True)
        self.assertIs(m["server_cpu"].met(44.5, 100, floor), False)
        # commit1: at least 2x ZEO's throughput.
        self.assertIs(m["commit1"].met(2000, 1000), True)
        self.assertIs(m["commit1"].met(1999, 1000), False)
        # fan-out: at most half of ZEO's time.
        self.assertIs(m["fanout"].met(2.5, 5.0), True)
        self.assertIs(m["fanout"].met(2.6, 5.0), False)
        # idle: an absolute budget, whatever ZEO uses.
        self.assertIs(m["idle"].met(49.9, None), True)
        self.assertIs(m["idle"].met(50, 1), False)
        # Nothing measured: unknown, not met; no floor measured either.
        self.assertIsNone(m["ping"].met(None, 100, floor))
        self.assertIsNone(m["commit1"].met(10, 0))
        self.assertIsNone(m["ping"].met(10, 100))
        self.assertIsNone(m["ping"].met(10, 100, {}))
        # "How many times better" for the plot, either way round; a floor
        # goal as ZEO's time over the goal's.
        self.assertAlmostEqual(m["ping"].better(25, 100), 4)
        self.assertAlmostEqual(m["commit1"].better(300, 100), 3)
        self.assertAlmostEqual(m["fanout"].goal_better(100), 2)
        self.assertAlmostEqual(m["ping"].goal_better(230, floor), 2)
        self.assertIsNone(m["ping"].goal_better(230, {}))

    def test_plan_runs_everything_under_z5_and_the_key_workloads_under_m5(self):
        scenarios = self.scenarios
        every = scenarios.SCENARIOS
        both = scenarios.plan(every)
        self.assertEqual([s.name for s, e in both if e == "Z5"], [s.name for s in every])
        self.assertEqual([s.name for s, e in both if e == "M5"],
                         ["ping", "commit1", "commit100", "cold"])
        self.assertLessEqual(len(both), 1.5 * len(every))   # not twice as long
        for encoding in ("Z5", "M5"):
            self.assertEqual(scenarios.plan(every, encoding),
                             [(s, encoding) for s in every])
        blobs = [scenarios.BY_NAME["blobs"]]
        self.assertEqual(scenarios.plan(blobs), [(blobs[0], "Z5")])
        with self.assertRaises(ValueError):
            scenarios.plan(every, "pickle")

    def test_table(self):
        results = [self.result("ping", 110.0, 300.0),
                   self.result("server_cpu", 60.0, 80.0),
                   self.result("commit1", 1500.0, 1000.0),
                   self.result("cold_read", None, 4000.0)]
        results[3]["errors"] = {"ours": ["client failed"]}
        text = self.report.table({
            "results": results, "floor_us": {"blocking": 13.25},
            "quick": True, "repeat": 1, "seconds": 12.0,
            "machine": {"loadavg_before": [0.5, 0, 0]}})
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("workload"))
        # A latency shows its floor of the same run and the ratio to it.
        ping = next(line for line in lines if line.startswith("ping latency"))
        self.assertRegex(ping, r"^ping latency +Z5 +µs +110 +300 +0\.37x +100 +1\.10x"
                               r" +<= 1\.15x floor +yes$")
        cpu = next(line for line in lines if line.startswith("server CPU"))
        self.assertRegex(cpu, r"60\.0 +80\.0 +0\.75x +40\.0 +1\.50x +<= 1\.1x floor +NO$")
        commit = next(line for line in lines if line.startswith("commit 1"))
        self.assertRegex(commit, r"1,500 +1,000 +1\.50x +>= 2x +NO$")
        cold = next(line for line in lines if line.startswith("cold read"))
        self.assertIn("? (errors: ours)", cold)
        self.assertIn("blocking sockets (thread server)", text)
        self.assertIn("13.2", text)
        self.assertTrue(lines[-1].startswith("quick run, medians of 1 run(s)"))

    def test_plot_draws_met_green_and_missed_red(self):
        results = [self.result("commit1", 3000.0, 1000.0),   # 3x: met
                   self.result("ping", 150.0, 300.0)]        # 1.5x floor: missed
        directory = tempfile.mkdtemp(prefix="zeo-benchmark-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "plot.png")
        self.png.plot({"results": results, "floor_us": {}, "quick": False}, path)
        with open(path, "rb") as f:
            width, height, rows = read_png(f.read())
        self.assertEqual(width, 1180)
        green, red = bytes((46, 160, 67)), bytes((214, 39, 40))

        def colors_in_row(n):
            row = rows[70 + n * 36 + 18]       # the middle of bar n
            return {row[x:x + 3] for x in range(0, len(row), 3)}
        self.assertIn(green, colors_in_row(0))
        self.assertNotIn(red, colors_in_row(0))
        self.assertIn(red, colors_in_row(1))
        self.assertNotIn(green, colors_in_row(1))


@unittest.skipIf(not SCRIPT.exists(), f"no {SCRIPT}")
class ScaleOutPartsTests(unittest.TestCase):
    """The scale-out set's goals and table, on made-up measurements."""

    def setUp(self):
        _, self.report, _, self.scaleout = import_runner()
        self.sizes = dict(self.scaleout.QUICK)

    def rows(self, commit=(100.0, 140.0, 400.0), notify=(0.005, 0.020),
             lost=0, errors=None):
        front, direct, filestorage = commit
        measured = {("commit1", "front"): [front], ("commit1", "direct"): [direct],
                    ("commit1", "filestorage"): [filestorage],
                    ("cold", "front"): [1000.0], ("cold", "direct"): [2000.0],
                    ("cold", "filestorage"): [4000.0],
                    ("aggregate", 1): [100.0], ("aggregate", 2): [150.0],
                    ("aggregate", 3): [180.0]}
        # 99 commits at the first latency and 1 at the second: median,
        # p99 (nearest rank: the 99th of 100).
        fast, slow = notify
        latencies = {"notify": [(fast, fast + 0.01)] * 98 + [(slow, slow + 0.01)] * 2,
                     "poll": [(0.03, 0.04)] * 10}
        verify = {"acknowledged": 50, "present": 50 - lost, "lost": lost}
        details = {f"aggregate {n} fronts": [{"verify": verify}] for n in (1, 2, 3)}
        rows = self.scaleout.results(self.sizes, measured, errors or {}, details, latencies)
        return {r["name"]: r for r in rows}

    def test_goals(self):
        rows = self.rows()
        # A commit through a front within 1.5x of RelStorage directly.
        self.assertAlmostEqual(rows["commit1"]["ratio"], 100 / 140)
        self.assertIs(rows["commit1"]["met"], True)
        self.assertIs(self.rows(commit=(90.0, 140.0, 400.0))["commit1"]["met"], False)
        self.assertIsNone(rows["cold"]["met"])        # no goal, just the figures
        self.assertAlmostEqual(rows["aggregate3"]["ratio"], 1.8)
        # Visibility with NOTIFY: median <= 10 ms, p99 <= 50 ms.
        self.assertAlmostEqual(rows["visibility_notify_median"]["values"]["front"], 5.0)
        self.assertAlmostEqual(rows["visibility_notify_p99"]["values"]["front"], 20.0)
        self.assertAlmostEqual(
            rows["visibility_notify_median_from_start"]["values"]["front"], 15.0)
        self.assertIs(rows["visibility_notify_median"]["met"], True)
        self.assertIs(rows["visibility_notify_p99"]["met"], True)
        late = self.rows(notify=(0.011, 0.051))
        self.assertIs(late["visibility_notify_median"]["met"], False)
        self.assertIs(late["visibility_notify_p99"]["met"], False)
        self.assertIsNone(rows["visibility_poll_median"]["met"])
        # 0 lost commits, over the three aggregate runs.
        self.assertEqual(rows["lost"]["values"]["front"], 0)
        self.assertIs(rows["lost"]["met"], True)
        self.assertIn("of 150", rows["lost"]["title"])
        self.assertIs(self.rows(lost=1)["lost"]["met"], False)

    def test_nothing_measured_is_unknown_not_met(self):
        rows = {r["name"]: r for r in self.scaleout.results(
            self.sizes, {}, {("commit1", "front"): ["front did not start"]}, {},
            {"notify": [], "poll": []})}
        self.assertIsNone(rows["commit1"]["met"])
        self.assertEqual(rows["commit1"]["errors"], {"front": ["front did not start"]})
        self.assertIsNone(rows["visibility_notify_p99"]["met"])
        self.assertIsNone(rows["lost"]["met"])

    def test_table(self):
        report = {"results": list(self.rows().values()), "quick": False, "repeat": 3,
                  "seconds": 100.0, "machine": {"loadavg_before": [1.0, 0, 0]}}
        lines = self.report.scaleout_table(report).splitlines()
        self.assertTrue(lines[0].startswith("workload"))
        commit = next(line for line in lines if line.startswith("commit 1 object"))
        self.assertRegex(commit, r"txn/s +100 +140 +400 +0\.71x front/direct +>= 1/1\.5x +yes$")
        lost = next(line for line in lines if line.startswith("lost commits"))
        self.assertRegex(lost, r" 0 .* yes$")
        self.assertTrue(lines[-1].startswith("full run, medians of 3 run(s)"))
