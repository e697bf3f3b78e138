"""Waiter: where an application thread waits for one result."""
from __future__ import annotations

import threading
import unittest

from zeo.client.connections import Waiter
from zeo.client.errors import ClientDisconnected


class WaiterTests(unittest.TestCase):

    def test_result(self):
        waiter = Waiter()
        threading.Timer(0.01, waiter.set_result, (42,)).start()
        self.assertEqual(waiter.wait(), 42)

    def test_error(self):
        waiter = Waiter()
        waiter.set_exception(KeyError('k'))
        self.assertRaises(KeyError, waiter.wait)

    def test_hook(self):
        waiter = Waiter(lambda value: value * 2)
        waiter.set_result(21)
        self.assertEqual(waiter.wait(), 42)
        waiter = Waiter(lambda value: 1 / 0)
        waiter.set_result(21)
        self.assertRaises(ZeroDivisionError, waiter.wait)

    def test_timeout(self):
        self.assertRaises(ClientDisconnected, Waiter().wait, 0.01)
