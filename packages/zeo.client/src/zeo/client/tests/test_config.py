"""ClientConfig: addresses, options, validation, cache paths."""
from __future__ import annotations

import os
import unittest

from zeo.client.config import ClientConfig, normalize_addresses


class AddressTests(unittest.TestCase):

    def test_forms(self):
        self.assertEqual(normalize_addresses(8100), (('127.0.0.1', 8100),))
        self.assertEqual(normalize_addresses(('', 8100)), (('127.0.0.1', 8100),))
        self.assertEqual(normalize_addresses(('db', 1)), (('db', 1),))
        self.assertEqual(normalize_addresses('/tmp/zeo.sock'), ('/tmp/zeo.sock',))
        self.assertEqual(normalize_addresses([('a', 1), 2, '/s']),
                         (('a', 1), ('127.0.0.1', 2), '/s'))

    def test_bad_addresses(self):
        for bad in (None, 1.5, True, ('a', 70000), [], '', [None]):
            with self.subTest(bad=bad):
                self.assertRaises((TypeError, ValueError), normalize_addresses, bad)


class OptionTests(unittest.TestCase):

    def test_defaults(self):
        config = ClientConfig.from_options(8100)
        self.assertEqual(config.storage, '1')
        self.assertEqual(config.wait_timeout, 30)
        self.assertEqual(config.cache_size, 20 * 1024 * 1024)
        self.assertTrue(config.wait)
        self.assertIs(config.direct_calls, True)
        self.assertEqual(config.display_name, "('127.0.0.1', 8100)")
        self.assertIs(ClientConfig.from_options(1, direct_calls=0).direct_calls, False)
        self.assertIs(ClientConfig.from_options(1, direct_calls=None).direct_calls, True)

    def test_reference_options(self):
        config = ClientConfig.from_options(
            [1, 2], storage=2, name='n', wait_timeout=None, read_only=1,
            credentials=None, username='u', drop_cache_rather_verify=True,
            min_disconnect_poll=2)
        self.assertEqual(config.storage, '2')
        self.assertIs(config.read_only, True)
        self.assertEqual(config.wait_timeout, 30)
        self.assertEqual(config.disconnect_poll, 2)
        self.assertEqual(config.display_name, 'n')

    def test_unknown_and_bad_options(self):
        self.assertRaises(TypeError, ClientConfig.from_options, 1, colour='red')
        for options in ({'wait_timeout': -1}, {'cache_size': -1},
                        {'read_only': True, 'read_only_fallback': True},
                        {'shared_blob_dir': True}, {'blob_cache_size_check': 100},
                        {'ssl': 'yes'}, {'ssl_server_hostname': 'h'},
                        {'disconnect_poll': 5, 'max_disconnect_poll': 1},
                        {'storage': ''}, {'direct_calls': 'no'}):
            with self.subTest(options=options):
                self.assertRaises((TypeError, ValueError),
                                  ClientConfig.from_options, 1, **options)

    def test_cache_path(self):
        self.assertIsNone(ClientConfig.from_options(1).cache_path())
        self.assertEqual(ClientConfig.from_options(1, cache='/x.zec').cache_path(), '/x.zec')
        self.assertEqual(
            ClientConfig.from_options(1, client='app', var='/var', storage='main').cache_path(),
            os.path.join('/var', 'app-main.zec'))
        self.assertEqual(ClientConfig.from_options(1, client='app').cache_path(),
                         os.path.join(os.getcwd(), 'app-1.zec'))

    def test_frozen(self):
        config = ClientConfig.from_options(1)
        with self.assertRaises(Exception):
            config.storage = '2'


if __name__ == '__main__':
    unittest.main()
