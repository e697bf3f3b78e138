"""TLS with real certificates (trustme): only clients with a certificate
signed by the configured authority get in."""

import os
import shutil
import ssl
import tempfile
import unittest

import trustme

import zeo.server
from zeo.server.tests.rawclient import RawClient
from zeo.server.zconfig import server_ssl_context

Z64 = b"\0" * 8


class TLSTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-tls-")
        self.ca = trustme.CA()
        server_cert = self.ca.issue_cert("localhost", "127.0.0.1")
        certificate = os.path.join(self.directory, "server.pem")
        server_cert.private_key_and_cert_chain_pem.write_to_path(certificate)
        ca_file = os.path.join(self.directory, "ca.pem")
        self.ca.cert_pem.write_to_path(ca_file)
        context = server_ssl_context(certificate, authenticate=ca_file)
        self.address, self.stop = zeo.server.server(
            path=os.path.join(self.directory, "Data.fs"), ssl=context)

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.directory)

    def client_context(self, signed_by=None, with_certificate=True):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(context)
        if with_certificate:
            issuer = signed_by or self.ca
            issuer.issue_cert("client@example.com").configure_cert(context)
        return context

    def assert_refused(self, **options):
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            client = RawClient(self.address, server_hostname="localhost", timeout=2, **options)
            client.call("lastTransaction")

    def test_a_client_with_a_valid_certificate_commits(self):
        client = RawClient(self.address, ssl_context=self.client_context(),
                           server_hostname="localhost")
        oid = client.call("new_oids", 1)[0]
        self.assertIsInstance(client.commit(1, [(oid, Z64, b"secret")]), bytes)
        client.close()

    def test_the_reference_client_connects_with_its_certificate(self):
        import ZODB
        from ZEO.ClientStorage import ClientStorage
        storage = ClientStorage(self.address, ssl=self.client_context(),
                                ssl_server_hostname="localhost", wait_timeout=30)
        db = ZODB.DB(storage)
        with db.transaction() as connection:
            connection.root.x = 1
        db.close()

    def test_no_certificate_gets_nothing(self):
        self.assert_refused(ssl_context=self.client_context(with_certificate=False))
        self.test_a_client_with_a_valid_certificate_commits()

    def test_a_certificate_from_another_authority_gets_nothing(self):
        self.assert_refused(ssl_context=self.client_context(signed_by=trustme.CA()))
        self.test_a_client_with_a_valid_certificate_commits()

    def test_plain_tcp_gets_nothing(self):
        self.assert_refused(ssl_context=None)
        self.test_a_client_with_a_valid_certificate_commits()


if __name__ == "__main__":
    unittest.main()
