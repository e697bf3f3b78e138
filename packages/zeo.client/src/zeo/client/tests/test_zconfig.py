"""The <clientstorage> ZConfig section: keys, TLS, errors, and opening."""
import io
import os
import shutil
import ssl
import tempfile
import unittest
from unittest import mock

import transaction
import trustme
import ZConfig
import ZODB.blob
import ZODB.config

from zeo.client import zconfig
from zeo.client.zconfig import ClientStorageConfig
from zeo.client.tests.support import parse, section

try:
    from ZEO.ClientStorage import ClientStorage as ReferenceClientStorage
except ImportError:  # pragma: no cover
    ReferenceClientStorage = None


def password():
    """A password-function for the encrypted key test."""
    return 'secret'


not_callable = 42

DEFAULTS = {
    'storage': '1', 'cache_size': 20 * 1024 * 1024, 'cache': None,
    'blob_dir': None, 'shared_blob_dir': False, 'blob_cache_size': None,
    'blob_cache_size_check': 10, 'read_only': False,
    'read_only_fallback': False, 'server_sync': False, 'wait_timeout': 30,
    'client_label': None, 'name': '', 'client': None, 'var': None,
    'ssl': None, 'ssl_server_hostname': None,
}


class TempDirTestCase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='zeozconfig')

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def write(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb' if isinstance(data, bytes) else 'w') as f:
            f.write(data)
        return path

    def assertConfigError(self, text, *fragments):
        with self.assertRaises(ZConfig.ConfigurationError) as caught:
            parse(text)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))
        return caught.exception


class KeyTests(TempDirTestCase):

    def test_defaults(self):
        storage = parse(section('server 8100'))
        self.assertIsInstance(storage, ClientStorageConfig)
        self.assertIsNone(storage.name)
        self.assertEqual(storage.addresses, [('127.0.0.1', 8100)])
        self.assertEqual(storage.arguments, DEFAULTS)

    def test_every_key(self):
        storage = parse(section(
            'server 127.0.0.1:8100',
            'server [::1]:8200',
            'server 9000',
            'server ZEO.Example:8300',
            'server /tmp/zeo.sock',
            'storage main',
            'name my storage',
            'cache-size 50MB',
            f'cache-path {self.tmp}/cache.zec',
            'client app',
            f'var {self.tmp}',
            f'blob-dir {self.tmp}/blobs',
            'shared-blob-dir off',
            'blob-cache-size 1GB',
            'blob-cache-size-check 25',
            'read-only on',
            'read-only-fallback on',
            'server-sync true',
            'wait-timeout 5',
            'client-label app-1',
            'event-loop asyncio',
            'direct-calls false',
            ssl_lines=['check-hostname false', 'server-hostname zeo.example'],
            name='main'))
        self.assertEqual(storage.name, 'main')
        self.assertEqual(storage.addresses, [
            ('127.0.0.1', 8100), ('::1', 8200), ('127.0.0.1', 9000),
            ('zeo.example', 8300), '/tmp/zeo.sock'])
        arguments = dict(storage.arguments)
        context = arguments.pop('ssl')
        self.assertIsInstance(context, ssl.SSLContext)
        self.assertFalse(context.check_hostname)
        self.assertEqual(arguments, {
            'storage': 'main', 'cache_size': 50 * 1024 * 1024,
            'cache': f'{self.tmp}/cache.zec', 'blob_dir': f'{self.tmp}/blobs',
            'shared_blob_dir': False, 'blob_cache_size': 1024 ** 3,
            'blob_cache_size_check': 25, 'read_only': True,
            'read_only_fallback': True, 'server_sync': True,
            'wait_timeout': 5, 'client_label': 'app-1', 'name': 'my storage',
            'client': 'app', 'var': self.tmp,
            'ssl_server_hostname': 'zeo.example', 'event_loop': 'asyncio',
            'direct_calls': False})

    def test_shared_blob_dir(self):
        storage = parse(section('server 1', f'blob-dir {self.tmp}',
                                'shared-blob-dir yes'))
        self.assertTrue(storage.arguments['shared_blob_dir'])

    def test_inside_zodb(self):
        schema = ZODB.config.getDbSchema()
        config, _ = ZConfig.loadConfigFile(schema, io.StringIO(
            '%import zeo.client\n<zodb>\n  cache-size 123\n'
            + section('server 8100') + '</zodb>\n'))
        self.assertEqual(config.database[0].config.storage.addresses,
                         [('127.0.0.1', 8100)])

    def test_open_calls_client_storage_with_the_arguments(self):
        calls = []

        class Recorder:
            def __init__(self, addresses, **kw):
                calls.append((addresses, kw))
        with mock.patch.object(zconfig, '_client_storage_class',
                               return_value=Recorder):
            storage = ZODB.config.storageFromString(
                '%import zeo.client\n' + section('server 8100', 'server 8101'))
        self.assertIsInstance(storage, Recorder)
        self.assertEqual(calls, [([('127.0.0.1', 8100), ('127.0.0.1', 8101)],
                                  DEFAULTS)])


class BadValueTests(TempDirTestCase):

    def test_server(self):
        self.assertConfigError(section('storage 1'), 'server')
        self.assertConfigError(section('server zeo.example'),
                               "'zeo.example' has no port", 'line 3')
        self.assertConfigError(section('server 127.0.0.1:70000'), '65535')
        self.assertConfigError(section('server two words:80'),
                               'is not a host name')

    def test_numbers(self):
        for value in ('0', '100', '-5', 'ten'):
            with self.subTest(value=value):
                self.assertConfigError(
                    section('server 1', f'blob-dir {self.tmp}',
                            f'blob-cache-size-check {value}'),
                    'blob-cache-size-check' if value.lstrip('-').isdigit()
                    else 'whole number')
        self.assertConfigError(section('server 1', 'wait-timeout -1'),
                               'negative')
        self.assertConfigError(section('server 1', 'cache-size lots'))
        self.assertConfigError(section('server 1', 'cache-size -5'),
                               'cache-size must not be negative')

    def test_blob_keys_need_blob_dir(self):
        self.assertConfigError(section('server 1', 'shared-blob-dir on'),
                               'shared-blob-dir needs blob-dir')
        self.assertConfigError(section('server 1', 'blob-cache-size 1MB'),
                               'blob-cache-size needs blob-dir')

    def test_paths(self):
        missing = os.path.join(self.tmp, 'missing')
        self.assertConfigError(section('server 1', f'var {missing}'),
                               'not an existing directory')
        self.assertConfigError(
            section('server 1', f'cache-path {missing}/cache.zec'),
            'does not exist')

    def test_unknown_key(self):
        self.assertConfigError(section('server 1', 'wait yes'), 'wait')

    def test_ssl_keys(self):
        missing = os.path.join(self.tmp, 'missing.pem')
        junk = self.write('junk.pem', 'not a certificate\n')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'key {junk}']), 'give certificate too')
        self.assertConfigError(section('server 1', ssl_lines=[
            'password-function zeo.client.tests.test_zconfig.password']),
            'give certificate too')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'certificate {missing}']), 'not an existing file')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'certificate {self.tmp}']), 'not an existing file')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'certificate {junk}']), 'cannot load the client certificate')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'authenticate {junk}']), 'cannot load CA certificates')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'authenticate {missing}']), 'not an existing path')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'certificate {junk}',
            'password-function no_such_module_zeo.password']),
            'cannot be imported')
        self.assertConfigError(section('server 1', ssl_lines=[
            f'certificate {junk}',
            'password-function zeo.client.tests.test_zconfig.not_callable']),
            'not callable')
        self.assertConfigError(section('server 1', ssl_lines=[
            'check-hostname maybe']))

    def test_unix_socket_with_tls_needs_a_host_name(self):
        self.assertConfigError(
            section('server /tmp/zeo.sock', ssl_lines=[]), 'server-hostname')
        storage = parse(section('server /tmp/zeo.sock', ssl_lines=[
            'server-hostname zeo.example']))
        self.assertEqual(storage.arguments['ssl_server_hostname'],
                         'zeo.example')
        storage = parse(section('server /tmp/zeo.sock', ssl_lines=[
            'check-hostname off']))
        self.assertFalse(storage.arguments['ssl'].check_hostname)


class EmptySSLTests(unittest.TestCase):

    def test_empty_ssl_section(self):
        for ssl_text in ('<ssl>\n</ssl>\n', '<ssl/>\n'):
            with self.subTest(ssl_text=ssl_text):
                storage = parse('<clientstorage>\nserver zeo.example:8100\n'
                                + ssl_text + '</clientstorage>\n')
                context = storage.arguments['ssl']
                self.assertIsInstance(context, ssl.SSLContext)
                self.assertEqual(context.verify_mode, ssl.CERT_REQUIRED)
                self.assertTrue(context.check_hostname)
                self.assertTrue(context.verify_flags & ssl.VERIFY_X509_STRICT)
                self.assertIsNone(storage.arguments['ssl_server_hostname'])

    def test_system_cas_are_used(self):
        with mock.patch.object(ssl.SSLContext, 'load_default_certs') as load:
            parse(section('server 1', ssl_lines=[]))
        load.assert_called_once()

    @unittest.skipIf(ReferenceClientStorage is None, 'reference ZEO missing')
    def test_the_reference_refuses_it(self):
        # The reference documents <ssl></ssl> but cannot parse it.
        with self.assertRaises(ZConfig.ConfigurationError):
            parse(section('server 1', ssl_lines=[]), header='%import ZEO\n')


class CertificateTests(TempDirTestCase):

    def setUp(self):
        super().setUp()
        self.ca = trustme.CA()
        self.ca_file = os.path.join(self.tmp, 'ca.pem')
        self.ca.cert_pem.write_to_path(self.ca_file)
        client = self.ca.issue_cert('client.zeo.example')
        self.client_cert = os.path.join(self.tmp, 'client.pem')
        self.client_key = os.path.join(self.tmp, 'client.key')
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)
        self.client = client
        self.server_cert = self.ca.issue_cert('zeo.example', '127.0.0.1')

    def server_context(self):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def handshake(self, client_context, server_hostname='zeo.example'):
        """Run a TLS handshake in memory; return the server's view of the
        client certificate."""
        ends = {}
        for name, context, kw in (
                ('server', self.server_context(), {'server_side': True}),
                ('client', client_context,
                 {'server_hostname': server_hostname})):
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            ends[name] = (context.wrap_bio(incoming, outgoing, **kw),
                          incoming, outgoing)
        done = {'client': False, 'server': False}
        for _ in range(20):
            for name, peer in (('client', 'server'), ('server', 'client')):
                end, _, outgoing = ends[name]
                if not done[name]:
                    try:
                        end.do_handshake()
                        done[name] = True
                    except ssl.SSLWantReadError:
                        pass
                data = outgoing.read()
                if data:
                    ends[peer][1].write(data)
            if all(done.values()):
                return ends['server'][0].getpeercert()
        raise AssertionError('handshake did not finish')

    def ssl_section(self, *extra):
        return section('server zeo.example:8100', ssl_lines=[
            f'certificate {self.client_cert}', f'key {self.client_key}',
            f'authenticate {self.ca_file}', *extra])

    def test_client_certificate_and_ca(self):
        storage = parse(self.ssl_section())
        context = storage.arguments['ssl']
        self.assertEqual(context.cert_store_stats()['x509_ca'], 1)
        peer = self.handshake(context)
        self.assertIn(('DNS', 'client.zeo.example'),
                      peer['subjectAltName'])

    def test_host_name_is_checked(self):
        context = parse(self.ssl_section()).arguments['ssl']
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.handshake(context, 'other.example')
        context = parse(self.ssl_section('check-hostname no')).arguments['ssl']
        self.handshake(context, 'other.example')

    def test_unknown_ca_is_refused(self):
        other_ca = os.path.join(self.tmp, 'other-ca.pem')
        trustme.CA().cert_pem.write_to_path(other_ca)
        context = parse(section('server zeo.example:8100', ssl_lines=[
            f'certificate {self.client_cert}', f'key {self.client_key}',
            f'authenticate {other_ca}'])).arguments['ssl']
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.handshake(context)

    def test_certificate_and_key_in_one_file(self):
        both = os.path.join(self.tmp, 'both.pem')
        self.client.private_key_and_cert_chain_pem.write_to_path(both)
        context = parse(section('server zeo.example:8100', ssl_lines=[
            f'certificate {both}', f'authenticate {self.ca_file}'],
        )).arguments['ssl']
        self.handshake(context)

    def test_encrypted_key_with_password_function(self):
        from cryptography.hazmat.primitives import serialization
        key = serialization.load_pem_private_key(
            self.client.private_key_pem.bytes(), password=None)
        encrypted = self.write('encrypted.key', key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b'secret')))
        context = parse(section('server zeo.example:8100', ssl_lines=[
            f'certificate {self.client_cert}', f'key {encrypted}',
            'password-function zeo.client.tests.test_zconfig.password',
            f'authenticate {self.ca_file}'])).arguments['ssl']
        self.handshake(context)
        self.assertConfigError(section('server zeo.example:8100', ssl_lines=[
            f'certificate {self.client_cert}', f'key {encrypted}']),
            'is encrypted: set password-function')

    def test_ca_directory(self):
        with mock.patch.object(zconfig.ssl, 'create_default_context',
                               wraps=ssl.create_default_context) as create:
            parse(section('server 1', ssl_lines=[f'authenticate {self.tmp}']))
        self.assertEqual(create.call_args.kwargs,
                         {'cafile': None, 'capath': self.tmp})


class EndToEndTestBase(TempDirTestCase):
    """Open a database from a configuration text against a real server
    (serving a MappingStorage with blobs)."""

    def server_options(self):
        return {'blob_dir': os.path.join(self.tmp, 'server-blobs')}

    def setUp(self):
        super().setUp()
        import zeo.server
        self.address, self.stop = zeo.server.server(**self.server_options())
        self.addCleanup(self.stop)

    def commit_and_read(self, text, blob=False):
        db = ZODB.config.databaseFromString(text)
        try:
            with db.transaction() as conn:
                conn.root()['answer'] = 42
                if blob:
                    conn.root()['blob'] = ZODB.blob.Blob(b'blob data')
            with db.transaction() as conn:
                self.assertEqual(conn.root()['answer'], 42)
                if blob:
                    with conn.root()['blob'].open() as f:
                        self.assertEqual(f.read(), b'blob data')
        finally:
            db.close()
        transaction.abort()

    def config_text(self, *extra, ssl_lines=None):
        host, port = self.address
        return ('%import zeo.client\n<zodb>\n' + section(
            f'server {host}:{port}', 'wait-timeout 10', *extra,
            ssl_lines=ssl_lines) + '</zodb>\n')


class TLSServer:
    """Mixin: the server requires TLS with a client certificate."""

    def server_options(self):
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert('zeo.example', '127.0.0.1').configure_cert(context)
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return dict(super().server_options(), ssl=context)

    def ssl_lines(self):
        ca_file = os.path.join(self.tmp, 'ca.pem')
        self.ca.cert_pem.write_to_path(ca_file)
        both = os.path.join(self.tmp, 'client.pem')
        self.ca.issue_cert('client.zeo.example') \
            .private_key_and_cert_chain_pem.write_to_path(both)
        return [f'certificate {both}', f'authenticate {ca_file}',
                'server-hostname zeo.example']


def our_client_storage():
    try:
        return zconfig._client_storage_class()
    except ImportError:
        return None


@unittest.skipIf(our_client_storage() is None,
                 'zeo.client.ClientStorage is not written yet')
class EndToEndTests(EndToEndTestBase):

    def test_database_from_string(self):
        self.commit_and_read(self.config_text(
            f'blob-dir {self.tmp}/blobs', 'blob-cache-size 10MB'), blob=True)


class TLSEndToEndTests(TLSServer, EndToEndTests):

    def test_database_from_string(self):
        self.commit_and_read(self.config_text(ssl_lines=self.ssl_lines()))


@unittest.skipIf(ReferenceClientStorage is None, 'reference ZEO missing')
class ReferenceEndToEndTests(EndToEndTestBase):
    """Our section, opened with the reference ClientStorage (whose
    signature ours mirrors) against our server."""

    def setUp(self):
        super().setUp()
        patcher = mock.patch.object(zconfig, '_client_storage_class',
                                    return_value=ReferenceClientStorage)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_database_from_string(self):
        self.commit_and_read(self.config_text(
            f'cache-path {self.tmp}/cache.zec', 'client-label e2e'))


class ReferenceTLSEndToEndTests(TLSServer, ReferenceEndToEndTests):

    def test_database_from_string(self):
        self.commit_and_read(self.config_text(ssl_lines=self.ssl_lines()))
