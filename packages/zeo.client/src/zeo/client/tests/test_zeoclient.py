"""``%import zeo.client.zeoclient``: a Zope/Plone ``zope.conf`` with ZODB's
``<zeoclient>`` section opens a zeo.client storage.

The configuration file is the one plone.recipe.zope2instance writes for a
ZEO client (its WSGI ``zope.conf``, blank lines dropped, ``zope-conf-imports``
giving the ``%import`` line), read with a small stand-in for Zope's schema
(ZODB's component plus a ``zodb_db`` type extending ``zodb``) and opened by
ZODB.config's own datatypes against a real zeo server.  The reference ZEO is
importable in this environment: without the line, the same file opens its
ClientStorage.
"""
import io
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import ZConfig
import ZODB.config

import zeo.server
from zeo.client.storage import ClientStorage
from zeo.client.tests.support import child_env

MODULE = 'zeo.client.zeoclient'

# Zope's schema, reduced to what the file below uses.
SCHEMA = """\
<schema>
  <import package="ZODB"/>
  <sectiontype name="zodb_db" extends="zodb" implements="ZODB.database">
    <multikey name="mount-point" attribute="mount_points"/>
    <key name="container-class"/>
  </sectiontype>
  <sectiontype name="environment">
    <key name="+" attribute="environ"/>
  </sectiontype>
  <key name="instancehome" required="yes"/>
  <key name="clienthome"/>
  <key name="debug-mode" datatype="boolean"/>
  <key name="security-policy-implementation"/>
  <key name="verbose-security" datatype="boolean"/>
  <key name="default-zpublisher-encoding"/>
  <key name="python-check-interval" datatype="integer"/>
  <section type="environment" name="*" attribute="environment"/>
  <multisection type="ZODB.database" name="+" attribute="databases"/>
</schema>
"""

# plone.recipe.zope2instance's output for
#   zeo-client = on, zeo-address = PORT, zeo-client-client = plone1,
#   zeo-var = VAR, zeo-client-blob-cache-size = 1GB,
#   zeo-client-blob-cache-size-check = 20, min-disconnect-poll = 5,
#   max-disconnect-poll = 300, zeo-client-drop-cache-rather-verify = true,
#   zope-conf-imports = zeo.client.zeoclient (the only line this adds).
ZOPE_CONF = """\
{imports}%define INSTANCEHOME {base}/parts/instance
instancehome $INSTANCEHOME
%define CLIENTHOME {base}/var/instance
clienthome $CLIENTHOME
debug-mode off
security-policy-implementation C
verbose-security off
default-zpublisher-encoding utf-8
<environment>
    CHAMELEON_CACHE {base}/var/cache
</environment>
<zodb_db main>
    # Main database
    cache-size 30000
    # Blob-enabled ZEOStorage database
    <zeoclient>
      read-only false
      read-only-fallback false
      blob-dir {base}/var/blobcache
      shared-blob-dir no
      server {port}
      storage 1
      name zeostorage
      cache-size 128MB
      blob-cache-size 1GB
      blob-cache-size-check 20
      var {base}/var
      client plone1
      min-disconnect-poll 5
      max-disconnect-poll 300
      drop-cache-rather-verify true
    </zeoclient>
    mount-point /
</zodb_db>
python-check-interval 1000"""


def forget_module():
    """Undo the switch and forget the module, so that the next ``%import``
    imports it afresh, as in a new process."""
    if MODULE in sys.modules:
        sys.modules[MODULE].uninstall()
        del sys.modules[MODULE]


def close(db):
    if hasattr(db, '_mvcc_storage'):   # not closed yet
        db.close()


class ZopeConfTests(unittest.TestCase):

    def setUp(self):
        self.schema = ZConfig.loadSchemaFile(io.StringIO(SCHEMA))
        forget_module()
        self.addCleanup(forget_module)
        self.base = tempfile.mkdtemp(prefix='zeo-zopeconf-')
        self.addCleanup(shutil.rmtree, self.base, True)
        for path in ('parts/instance', 'var/instance', 'var/cache',
                     'var/blobcache', 'server'):
            os.makedirs(os.path.join(self.base, path))
        server = os.path.join(self.base, 'server')
        address, stop = zeo.server.server(
            os.path.join(server, 'Data.fs'), os.path.join(server, 'blobs'))
        self.addCleanup(stop)
        self.port = address[1]

    def zope_conf(self, imports):
        path = os.path.join(self.base, 'parts', 'instance', 'zope.conf')
        with open(path, 'w') as f:
            f.write(ZOPE_CONF.format(imports=imports, base=self.base,
                                     port=self.port))
        return path

    def open_db(self, imports):
        config, _ = ZConfig.loadConfig(self.schema, self.zope_conf(imports))
        [database] = config.databases
        self.assertEqual(database.config.mount_points, ['/'])
        db = database.open()
        self.addCleanup(close, db)
        return db

    def test_the_import_line_opens_zeo_client(self):
        db = self.open_db(f'%import {MODULE}\n')
        storage = db.storage
        self.assertIs(type(storage), ClientStorage)
        config = storage.config
        self.assertEqual(config.addresses, (('127.0.0.1', self.port),))
        self.assertEqual(config.name, 'zeostorage')
        self.assertEqual(config.cache_size, 128 * 1024 ** 2)
        self.assertEqual(config.blob_cache_size, 1024 ** 3)
        self.assertEqual(config.blob_cache_size_check, 20)
        self.assertEqual(config.cache_path(),
                         os.path.join(self.base, 'var', 'plone1-1.zec'))
        self.assertEqual(config.blob_dir,
                         os.path.join(self.base, 'var', 'blobcache'))
        self.assertFalse(config.shared_blob_dir)
        # ZODB's defaults for the reconnect delays (5 s, 300 s) are
        # ignored, as the reference ZEO 5 and 6 ignore them.
        self.assertEqual(config.max_disconnect_poll,
                         type(config).max_disconnect_poll)
        with db.transaction() as connection:
            connection.root.site = 'Plone'
        db.close()

        # Read back through a fresh client with the same cache file.
        db = self.open_db(f'%import {MODULE}\n')
        with db.transaction() as connection:
            self.assertEqual(connection.root.site, 'Plone')
        self.assertTrue(
            os.path.exists(os.path.join(self.base, 'var', 'plone1-1.zec')))

    def test_the_line_in_an_included_file_at_the_end(self):
        # cookiecutter-zope-instance's zope_conf_include_file_location
        # appends "%include FILE" to its zope.conf: the %import may come
        # after the <zeoclient> section, as storages are opened later.
        included = os.path.join(self.base, 'zeo-client.conf')
        with open(included, 'w') as f:
            f.write(f'%import {MODULE}\n')
        path = self.zope_conf('')
        with open(path, 'a') as f:
            f.write(f'\n%include {included}\n')
        config, _ = ZConfig.loadConfig(self.schema, path)
        db = config.databases[0].open()
        self.addCleanup(close, db)
        self.assertIs(type(db.storage), ClientStorage)

    def test_without_the_reference_installed(self):
        # What a site with only zeo installed sees: ZEO cannot be imported.
        path = self.zope_conf(f'%import {MODULE}\n')
        code = (
            'import io, sys\n'
            'sys.modules["ZEO"] = None\n'
            'import ZConfig, transaction\n'
            f'schema = ZConfig.loadSchemaFile(io.StringIO({SCHEMA!r}))\n'
            f'config, _ = ZConfig.loadConfig(schema, {path!r})\n'
            'db = config.databases[0].open()\n'
            'with db.transaction() as connection:\n'
            '    connection.root.site = "Plone"\n'
            'print(type(db.storage).__module__)\n'
            'db.close()\n')
        env = child_env()
        result = subprocess.run([sys.executable, '-c', code], env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), 'zeo.client.storage')
        db = self.open_db(f'%import {MODULE}\n')
        with db.transaction() as connection:
            self.assertEqual(connection.root.site, 'Plone')

    def test_without_the_line_the_reference_is_used(self):
        from ZEO.ClientStorage import ClientStorage as Reference
        db = self.open_db('')
        self.assertIs(type(db.storage), Reference)
        self.assertNotIn(MODULE, sys.modules)
        with db.transaction() as connection:
            connection.root.by = 'ZEO'
        db.close()
        # Adding the line switches, and the data is the server's.
        db = self.open_db(f'%import {MODULE}\n')
        self.assertIs(type(db.storage), ClientStorage)
        with db.transaction() as connection:
            self.assertEqual(connection.root.by, 'ZEO')


class SwitchTests(unittest.TestCase):

    def setUp(self):
        forget_module()
        self.addCleanup(forget_module)

    def test_install_and_uninstall(self):
        original = ZODB.config.ZEOClient.open
        import zeo.client.zeoclient as zeoclient
        self.assertTrue(zeoclient.installed())
        self.assertIsNot(ZODB.config.ZEOClient.open, original)
        zeoclient.install()   # idempotent
        zeoclient.uninstall()
        self.assertFalse(zeoclient.installed())
        self.assertIs(ZODB.config.ZEOClient.open, original)
        zeoclient.uninstall()
        self.assertIs(ZODB.config.ZEOClient.open, original)

    def test_a_server_without_port(self):
        import zeo.client.zeoclient as zeoclient
        schema = ZODB.config.getStorageSchema()
        config, _ = ZConfig.loadConfigFile(schema, io.StringIO(
            f'%import {MODULE}\n<zeoclient>\n server localhost\n</zeoclient>\n'))
        with self.assertRaises(ValueError) as caught:
            zeoclient.client_arguments(config.storage.config)
        self.assertIn("'localhost' has no port", str(caught.exception))

    def test_keys_left_unset(self):
        import zeo.client.zeoclient as zeoclient
        schema = ZODB.config.getStorageSchema()
        config, _ = ZConfig.loadConfigFile(schema, io.StringIO(
            f'%import {MODULE}\n<zeoclient>\n server /tmp/x/zeo.sock\n'
            f' server [::1]:8100\n username me\n</zeoclient>\n'))
        addresses, options = zeoclient.client_arguments(config.storage.config)
        self.assertEqual(addresses, ['/tmp/x/zeo.sock', ('::1', 8100)])
        self.assertEqual(options, {
            'storage': '1', 'cache_size': 20 * 1024 ** 2, 'name': '',
            'shared_blob_dir': False, 'read_only': False,
            'read_only_fallback': False, 'wait': True})

    def test_read_only_fallback_wins(self):
        import zeo.client.zeoclient as zeoclient
        schema = ZODB.config.getStorageSchema()
        config, _ = ZConfig.loadConfigFile(schema, io.StringIO(
            f'%import {MODULE}\n<zeoclient>\n server 8100\n read-only true\n'
            f' read-only-fallback true\n</zeoclient>\n'))
        with self.assertLogs('zeo.client', 'WARNING'):
            _, options = zeoclient.client_arguments(config.storage.config)
        self.assertEqual((options['read_only'], options['read_only_fallback']),
                         (False, True))
