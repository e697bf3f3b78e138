"""The state tables of zeo.protocol.states."""

import unittest

from zeo.protocol.events import MESSAGE_TYPES
from zeo.protocol.states import RECEIVE_TABLE
from zeo.protocol.states import SEND_TABLE
from zeo.protocol.states import ConnectionState
from zeo.protocol.states import Role


class TableTests(unittest.TestCase):

    def test_tables(self):
        for (role, state), kinds in SEND_TABLE.items():
            self.assertIsInstance(role, Role)
            self.assertIsInstance(state, ConnectionState)
        # Messages are only sent and received in the OPEN state.
        for table in (SEND_TABLE, RECEIVE_TABLE):
            for (role, state), kinds in table.items():
                if kinds & MESSAGE_TYPES:
                    self.assertIs(state, ConnectionState.OPEN)
        # Each direction of the message phase is covered by exactly one role.
        self.assertEqual(
            SEND_TABLE[Role.CLIENT, ConnectionState.OPEN],
            RECEIVE_TABLE[Role.SERVER, ConnectionState.OPEN],
        )
        self.assertEqual(
            SEND_TABLE[Role.SERVER, ConnectionState.OPEN],
            RECEIVE_TABLE[Role.CLIENT, ConnectionState.OPEN],
        )
