import dataclasses
import unittest

from zeo.protocol.limits import DEFAULT_LIMITS
from zeo.protocol.limits import WIRE_MAX_FRAME_SIZE
from zeo.protocol.limits import ProtocolLimits


class ProtocolLimitsTests(unittest.TestCase):

    def test_defaults_fit_real_traffic(self):
        # Blob chunks are 59,000 bytes; a frame must hold many of them,
        # and a handshake with a capability list.
        self.assertEqual(DEFAULT_LIMITS.max_frame_size, 64 * 1024 * 1024)
        self.assertGreater(DEFAULT_LIMITS.max_frame_size, 1000 * 59000)
        self.assertLess(DEFAULT_LIMITS.max_frame_size, WIRE_MAX_FRAME_SIZE)
        self.assertEqual(DEFAULT_LIMITS.max_handshake_size, 256)

    def test_frozen(self):
        with self.assertRaises(dataclasses.FrozenInstanceError):
            DEFAULT_LIMITS.max_frame_size = 1

    def test_validation(self):
        for kwargs in (
            {"max_frame_size": 0},
            {"max_frame_size": WIRE_MAX_FRAME_SIZE + 1},
            {"max_handshake_size": 3},
            {"max_frame_size": 100, "max_handshake_size": 101},
            {"max_nesting_depth": 1},
        ):
            with self.subTest(kwargs):
                with self.assertRaises(ValueError):
                    ProtocolLimits(**kwargs)
        with self.assertRaises(TypeError):
            ProtocolLimits(max_frame_size=1.5)
        with self.assertRaises(TypeError):
            ProtocolLimits(max_frame_size=True)

    def test_custom(self):
        limits = ProtocolLimits(max_frame_size=1000, max_handshake_size=100)
        self.assertEqual((limits.max_frame_size, limits.max_handshake_size), (1000, 100))
