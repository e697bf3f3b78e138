"""zeo.server.results: replies settled later."""

import unittest

from zeo.server.results import Delayed, chain


def outcome(delayed):
    seen = []
    delayed.add_callback(lambda error, value: seen.append((error, value)))
    return seen[0] if seen else None


class DelayedTests(unittest.TestCase):

    def test_settle_with_a_value_or_the_exception_raised(self):
        done = Delayed()
        done.settle_with(lambda: 42)
        self.assertEqual(outcome(done), (None, 42))
        failed = Delayed()
        error = ValueError("no")
        failed.settle_with(lambda: (_ for _ in ()).throw(error))
        self.assertEqual(outcome(failed), (error, None))

    def test_settled_only_once(self):
        done = Delayed()
        done.resolve(1)
        with self.assertRaises(RuntimeError):
            done.settle_with(lambda: 2)
        self.assertEqual(outcome(done), (None, 1))

    def test_chain(self):
        source = Delayed()
        chained = chain(source, lambda value: value + 1)
        self.assertIsNone(outcome(chained))
        source.resolve(1)
        self.assertEqual(outcome(chained), (None, 2))
        source, error = Delayed(), KeyError("k")
        chained = chain(source, lambda value: value)
        source.fail(error)
        self.assertEqual(outcome(chained), (error, None))
        source = Delayed()
        chained = chain(source, lambda value: 1 / value)
        source.resolve(0)
        self.assertIsInstance(outcome(chained)[0], ZeroDivisionError)
