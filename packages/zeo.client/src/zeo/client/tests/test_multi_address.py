"""Several server addresses: only the connection that wins ever touches the
cache (the reference's issue #191).

Two real servers, W and L, hold *different* histories -- L's is the newer
-- so anything the client took from the connection that lost would show
as L's data or tids.  Each is reached through a fault proxy that stops
the conversation at a chosen message, so the interleaving is forced, not
hoped for:

1. the client registers with W, and W's activation (cache verification)
   is held at its ``get_info`` request;
2. meanwhile W commits: its invalidation reaches the client on W's
   connection, not yet the one in use;
3. then L's connection completes its handshake and registration, and L
   commits: its invalidation reaches the client on L's connection, which
   waits for W's activation to be over;
4. W's activation is let go on (or W's connection is cut).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import unittest

from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, z64

import zeo.server
from zeo.client.storage import ClientStorage
from zeo.client.tests.support import (
    OID1, OID2, RecordingDB, commit, wait_until)
from zeo.server.tests.faultproxy import FaultProxy

OID3 = p64(3)

#: Frames a client sends before ``register``'s reply: its protocol
#: version and the ``register`` call.  ``get_info`` is the next one.
UNTIL_REGISTERED = 2


def queued(connection):
    """The invalidations a connection holds back, as ``(tid, [oid, ...])``."""
    return [(tid, list(oids)) for tid, oids in connection.queue]


class RaceTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix='zeo-client-race-')
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.server_w = self.serve('W')
        self.server_l = self.serve('L')
        # The histories: W's, then L's (so L's tids are newer).
        self.tid_w1 = commit(self.direct(self.server_w), (OID1, z64, b'W1'))
        self.tid_l1 = commit(self.direct(self.server_l), (OID1, z64, b'L1'),
                             (OID2, z64, b'L1'))
        self.assertGreater(self.tid_l1, self.tid_w1)

    def serve(self, name):
        address, stop = zeo.server.server(
            storages={'1': FileStorage(os.path.join(self.directory, f'{name}.fs'))})
        self.addCleanup(stop)
        proxy = FaultProxy(address)
        proxy.start()
        self.addCleanup(proxy.stop)
        proxy.server_address = address
        return proxy

    def direct(self, proxy):
        """A client of *proxy*'s server, not through the proxy."""
        client = ClientStorage(proxy.server_address, wait_timeout=10)
        self.addCleanup(client.close)
        return client

    def connection_to(self, client, proxy):
        for channel in list(client._manager._channels):
            if channel.address == proxy.address:
                return channel
        return None

    def registered(self, client, proxy):
        protocol = self.connection_to(client, proxy)
        return protocol is not None and protocol.registered

    def race(self):
        """Steps 1-3 of the module docstring; return the client and its DB."""
        self.server_w.hold_after(UNTIL_REGISTERED, 'up')
        self.server_l.stall()
        db = RecordingDB()
        # A long retry delay: a failed attempt must not come back during
        # the test.
        client = ClientStorage([self.server_w.address, self.server_l.address], wait=False,
                               disconnect_poll=30, wait_timeout=10)
        self.addCleanup(client.close)
        client.registerDB(db)
        manager = client._manager
        # W registers, then its activation takes the lock and is held at
        # get_info.
        wait_until(lambda: self.registered(client, self.server_w)
                   and manager._activation.locked(), message="W's activation")
        self.assertFalse(self.registered(client, self.server_l))
        w_connection = self.connection_to(client, self.server_w)

        # 2. W commits; its invalidation waits in W's queue.
        self.tid_w2 = commit(self.direct(self.server_w), (OID1, self.tid_w1, b'W2'))
        wait_until(lambda: w_connection.queue, message="W's invalidation")
        self.assertEqual(queued(w_connection), [(self.tid_w2, [OID1])])

        # 3. L's connection catches up and registers; L commits.
        self.server_l.resume()
        wait_until(lambda: self.registered(client, self.server_l), message='L registered')
        l_connection = self.connection_to(client, self.server_l)
        self.tid_l2 = commit(self.direct(self.server_l), (OID3, z64, b'L2'))
        self.assertGreater(self.tid_l2, self.tid_w2)
        wait_until(lambda: l_connection.queue, message="L's invalidation")
        self.assertEqual(queued(l_connection), [(self.tid_l2, [OID3])])

        # Nothing of either has reached the client yet.
        self.assertFalse(client.is_connected())
        self.assertIsNone(manager.channel)
        self.assertEqual(client.lastTransaction(), z64)
        self.assertEqual(len(client._cache), 0)
        self.assertEqual(db.invalidated, [])
        return client, db, w_connection, l_connection

    def test_the_first_registered_wins_and_the_other_is_ignored(self):
        client, db, w_connection, l_connection = self.race()
        self.server_w.release()
        wait_until(client.is_connected, message='the connection')
        self.assertIs(client._manager.channel, w_connection)
        self.assertEqual(client._server_address, self.server_w.address)
        self.assertEqual(client._manager.verify_result, 'new cache')
        # The losing connection is closed, its queue never applied.
        wait_until(lambda: l_connection.closed, message="L's connection closed")
        wait_until(lambda: self.server_l.connections == 0, message='L disconnected')
        self.assertEqual(queued(l_connection), [(self.tid_l2, [OID3])])
        # Only W: its last tid, its invalidation, its data.
        self.assertEqual(client.lastTransaction(), self.tid_w2)
        self.assertEqual(db.invalidated, [(self.tid_w2, [OID1])])
        self.assertEqual(db.cache_invalidations, 0)
        self.assertEqual(client.load(OID1), (b'W2', self.tid_w2))
        self.assertEqual(client.loadBefore(OID1, self.tid_w2),
                         (b'W1', self.tid_w1, self.tid_w2))
        self.assertRaises(POSKeyError, client.load, OID2)
        self.assertRaises(POSKeyError, client.load, OID3)
        # Later commits: W's arrive, L's can't.
        commit(self.direct(self.server_l), (OID3, self.tid_l2, b'L3'))
        tid_w3 = commit(self.direct(self.server_w), (OID2, z64, b'W3'))
        wait_until(lambda: client.lastTransaction() == tid_w3, message="W's next commit")
        self.assertEqual(db.invalidated, [(self.tid_w2, [OID1]), (tid_w3, [OID2])])
        self.assertEqual(client.load(OID2), (b'W3', tid_w3))
        self.assertEqual(client.load(OID1), (b'W2', self.tid_w2))
        tid = commit(client, (OID1, self.tid_w2, b'mine'))
        self.assertEqual(self.direct(self.server_w).load(OID1), (b'mine', tid))

    def test_the_next_one_wins_when_the_first_fails_while_verifying(self):
        client, db, w_connection, l_connection = self.race()
        self.server_w.reset()   # W's connection is cut in the middle of its activation
        wait_until(client.is_connected, message='the connection')
        self.assertIs(client._manager.channel, l_connection)
        self.assertEqual(client._server_address, self.server_l.address)
        self.assertTrue(w_connection.closed)
        # Only L: W's queued invalidation was never applied.
        self.assertEqual(client.lastTransaction(), self.tid_l2)
        self.assertEqual(db.invalidated, [(self.tid_l2, [OID3])])
        self.assertEqual(client.load(OID1), (b'L1', self.tid_l1))
        self.assertEqual(client.load(OID2), (b'L1', self.tid_l1))
        self.assertEqual(client.load(OID3), (b'L2', self.tid_l2))
        self.assertEqual(client._cache.getLastTid(), self.tid_l2)
        tid_l3 = commit(self.direct(self.server_l), (OID2, self.tid_l1, b'L3'))
        wait_until(lambda: client.lastTransaction() == tid_l3, message="L's next commit")
        self.assertEqual(client.load(OID2), (b'L3', tid_l3))


if __name__ == '__main__':
    unittest.main()
