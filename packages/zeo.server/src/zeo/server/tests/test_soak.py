"""A memory soak: connection churn against a real runzeo subprocess.

Client threads connect, commit, read back and disconnect over and over
(one cycle in eight disconnects mid-transaction, half of those holding the
commit lock); the server's resident memory and descriptors are sampled
throughout (see `soaking`). The server must stay flat in memory (median of
the last quarter of the samples after the warm-up against the first,
within `soaking.TOLERANCE_KIB` + `soaking.TOLERANCE_FRACTION`), count no
connection and hold no extra descriptor at the end, and every client must
read back what it committed.

The default run soaks for 15 seconds (some 10,000 connections on 2 cores:
a leak of a few hundred bytes per connection shows); `LongSoakTests`
(level 3) for 5 minutes; ``bin/py -m zeo.server.tests.soak --minutes N``
for as long as asked.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest

from zeo.server.tests import soaking
from zeo.server.tests.support import ServerProcess


class SoakTests(unittest.TestCase):
    seconds = 15.0
    warm_up = 5.0
    clients = 4
    interval = 0.25

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-soak-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.server = ServerProcess(self.directory)
        self.addCleanup(self.server.stop)

    def test_memory_is_flat_and_nothing_leaks_under_connection_churn(self):
        server = self.server
        result = soaking.soak(server, self.seconds, self.clients, self.warm_up, self.interval)
        print(f"\n    {result.summary()}")
        self.assertEqual(result.errors, [])
        self.assertGreater(result.commits, 0)
        self.assertGreater(result.broken, 0)
        first, last, growth, allowed = result.judge()
        self.assertLess(growth, allowed, f"RSS went from {first} to {last} KiB")
        self.assertEqual(server.wait_connections(0), 0)
        self.assertLessEqual(server.descriptors(), result.descriptors_before)
        self.assertEqual(server.stop(), 0)


class JudgeTests(unittest.TestCase):
    """The memory criterion itself: it must see a leak and ignore noise."""

    def samples(self, kib_per_second, noise=0, seconds=SoakTests.seconds,
                interval=SoakTests.interval):
        # From 35 MiB, growing steadily, with a periodic wobble of +-noise.
        count = int(seconds / interval)
        return [(n * interval, int(35840 + kib_per_second * n * interval
                                   + noise * ((n % 7) - 3) / 3), 20)
                for n in range(count)]

    def judge(self, samples, warm_up=SoakTests.warm_up):
        return soaking.SoakResult(warm_up=warm_up, samples=samples).judge()

    def test_the_default_run_sees_500_bytes_a_connection(self):
        # The default run makes about 900 connections a second on 2 cores.
        first, last, growth, allowed = self.judge(self.samples(500 * 900 / 1024))
        self.assertGreater(growth, allowed)

    def test_a_long_run_sees_10_bytes_a_connection(self):
        samples = self.samples(10 * 900 / 1024, noise=300, seconds=600, interval=1)
        first, last, growth, allowed = self.judge(samples, warm_up=120)
        self.assertGreater(growth, allowed)

    def test_noise_and_a_flat_line_pass(self):
        first, last, growth, allowed = self.judge(self.samples(0, noise=1000))
        self.assertLess(growth, allowed)

    def test_too_few_samples_are_refused(self):
        with self.assertRaises(ValueError):
            self.judge(self.samples(0, seconds=6))


class LongSoakTests(SoakTests):
    level = 3
    seconds = 300.0
    warm_up = 60.0
    clients = 8
    interval = 1.0


if __name__ == "__main__":
    unittest.main()
