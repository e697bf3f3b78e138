"""``ClientStorage`` takes its options by position, in the reference's
order, as applications written for ZEO may pass them."""
import inspect
import os
import unittest

from ZODB.utils import z64

from zeo.client.arguments import POSITIONAL
from zeo.client.storage import ClientStorage
from zeo.client.tests.support import OID1, RecordingDB, ServerFixture
from zeo.client.tests.support import commit

NOWHERE = ('127.0.0.1', 1)


class SignatureTests(unittest.TestCase):

    def test_the_order_is_the_references(self):
        from ZEO.ClientStorage import ClientStorage as Reference
        names = list(inspect.signature(Reference.__init__).parameters)
        self.assertEqual(names[:3], ['self', 'addr', 'storage'])
        self.assertEqual(
            tuple(n for n in names[3:] if not n.startswith('_')), POSITIONAL)

    def test_an_option_given_twice(self):
        with self.assertRaises(TypeError) as caught:
            ClientStorage(NOWHERE, '1', 1000, cache_size=2000)
        self.assertIn("multiple values for argument 'cache_size'",
                      str(caught.exception))

    def test_too_many(self):
        with self.assertRaises(TypeError) as caught:
            ClientStorage(NOWHERE, '1', *([None] * (len(POSITIONAL) + 1)))
        self.assertIn('at most 27 positional', str(caught.exception))


class PositionalTests(ServerFixture):

    def test_options_by_position(self):
        blobs = os.path.join(self.directory, 'blobs')
        # addr, storage, cache_size, name, wait_timeout, disconnect_poll,
        # read_only, read_only_fallback, blob_dir
        client = ClientStorage(self.address, '1', 1_000_000, 'by position',
                               10, None, 0, 0, blobs)
        self.addCleanup(client.close)
        client.registerDB(RecordingDB())
        config = client.config
        self.assertEqual(config.cache_size, 1_000_000)
        self.assertEqual(config.name, 'by position')
        self.assertEqual(config.wait_timeout, 10)
        self.assertEqual(config.blob_dir, blobs)
        self.assertFalse(config.read_only)
        tid = commit(client, (OID1, z64, b'data'))
        self.assertEqual(client.load(OID1), (b'data', tid))
