"""zeo-status and zeopack against a real TLS server (trustme certificates),
and what they say when they cannot get an answer."""

import os
import shutil
import socket
import tempfile
import threading
import unittest

import trustme

import zeo.server
from zeo.server.admin import ServerUnreachable, status
from zeo.server.tests.support import free_port
from zeo.server.tests.support import TLSServer, run
from zeo.server.tools import CRITICAL, UNKNOWN, WARNING, pack_main, status_main

Z64 = b"\0" * 8


def key_password():
    """The password-function of `ConfigurationTests.test_encrypted_key`."""
    return b"secret"


class StatusOverTLSTests(TLSServer):

    def test_status_over_tls(self):
        code, out, err = run(status_main, self.target, *self.tls(), "-m")
        self.assertEqual(code, WARNING, out + err)    # a new, empty storage
        self.assertTrue(out.startswith("Empty storage '1'|active_txns=0\n"), out)

    def test_the_certificate_may_hold_the_key(self):
        combined = self.file("combined.pem")
        with open(combined, "w") as f:
            for name in (self.client_cert, self.client_key):
                with open(name) as part:
                    f.write(part.read())
        code, out, _ = run(status_main, self.target, "--ssl-certificate", combined,
                           "--ssl-authenticate", self.ca_file)    # the host name: 127.0.0.1
        self.assertEqual(code, WARNING, out)

    def test_plain_client_hears_about_tls(self):
        self.assert_critical([self.target], "may expect TLS")

    def test_untrusted_server_certificate(self):
        other = trustme.CA()
        other_file = self.file("other-ca.pem")
        other.cert_pem.write_to_path(other_file)
        self.assert_critical([self.target, *self.tls(ca=other_file)],
                             "TLS handshake failed: the server's certificate is not trusted")

    def test_wrong_server_name(self):
        self.assert_critical([self.target, *self.tls(hostname="elsewhere.example.com")],
                             "certificate is not trusted", "elsewhere.example.com")
        code, out, _ = run(status_main, self.target,
                           *self.tls(hostname="elsewhere.example.com"), "--ssl-no-check-hostname")
        self.assertEqual(code, WARNING, out)

    def test_no_client_certificate(self):
        # TLS 1.3: the server refuses it after the client's side of the handshake.
        self.assert_critical([self.target, "--ssl-ca", self.ca_file], "TLS",
                             "refused our client certificate")

    def test_bad_options_are_unknown(self):
        code, out, _ = run(status_main, self.target, "--ssl-key", self.client_key)
        self.assertEqual((code, out.split(":")[0]), (UNKNOWN, "UNKNOWN"))
        self.assertIn("needs its certificate", out)
        code, out, _ = run(status_main, self.target, "--ssl-ca", self.file("nosuch.pem"))
        self.assertEqual(code, UNKNOWN)
        self.assertIn("cannot load the CA certificates", out)

    def test_zeopack_over_tls(self):
        import ZODB
        from ZEO.ClientStorage import ClientStorage
        import ssl
        context = ssl.create_default_context(cafile=self.ca_file)
        context.load_cert_chain(self.client_cert, self.client_key)
        db = ZODB.DB(ClientStorage(self.address, ssl=context, ssl_server_hostname="localhost",
                                   wait_timeout=30))
        for value in range(3):
            with db.transaction() as connection:
                connection.root.value = value
        db.close()
        before = os.path.getsize(self.path)
        code, _, err = run(pack_main, self.target, "--connect-timeout", "0.5")
        self.assertEqual(code, 1)
        self.assertIn("no ZEO greeting within 0.5 seconds (it may expect TLS)", err)
        code, _, err = run(pack_main, self.target, *self.tls())
        self.assertEqual(code, 0, err)
        self.assertLess(os.path.getsize(self.path), before)


class ConfigurationTests(TLSServer):
    """-C reads a client configuration as Zope or ZODB would."""

    def write(self, name, text):
        with open(self.file(name), "w") as f:
            f.write(text)
        return self.file(name)

    def config(self, server=None, ssl=True, storage="1"):
        self.write("ssl.conf", """
            <ssl>
              certificate $DIR/client.pem
              key $DIR/client.key
              authenticate $DIR/ca.pem
              server-hostname localhost
            </ssl>
            """ if ssl else "")
        return self.write("zope.conf", f"""
            %define DIR {self.directory}
            %import ZEO
            <zodb_db main>
              cache-size 1000
              <clientstorage>
                server {server or self.target}
                storage {storage}
                %include ssl.conf
              </clientstorage>
              mount-point /
            </zodb_db>
            """)

    def test_status_from_a_configuration(self):
        code, out, err = run(status_main, "-C", self.config())
        self.assertEqual(code, WARNING, out + err)
        self.assertIn("storage 1:", out)
        # The command line wins over the file.
        code, out, _ = run(status_main, "-C", self.config(), f"127.0.0.1:{free_port()}")
        self.assertEqual(code, CRITICAL, out)
        self.assertIn("connection refused", out)

    def test_zeopack_from_a_configuration(self):
        code, _, err = run(pack_main, "-C", self.config())
        self.assertEqual(code, 0, err)
        code, _, err = run(pack_main, "-C", self.config(storage="nosuch"))
        self.assertEqual(code, 1)
        self.assertIn("nosuch", err)

    def test_configuration_without_tls(self):
        code, out, _ = run(status_main, "-C", self.config(ssl=False))
        self.assertEqual(code, CRITICAL)
        self.assertIn("may expect TLS", out)

    def test_encrypted_key(self):
        from cryptography.hazmat.primitives import serialization
        with open(self.client_key, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(self.client_key, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"secret")))
        code, out, _ = run(status_main, self.target, *self.tls())
        self.assertEqual(code, UNKNOWN, out)
        self.assertIn("the client key is encrypted: give password-function", out)
        config = self.config()
        with open(self.file("ssl.conf")) as f:
            text = f.read().replace(
                "server-hostname localhost",
                "server-hostname localhost\n password-function"
                " zeo.server.tests.test_tools_tls.key_password")
        self.write("ssl.conf", text)
        code, out, _ = run(status_main, "-C", config)
        self.assertEqual(code, WARNING, out)

    def test_bad_configurations(self):
        code, out, _ = run(status_main, "-C", self.write("empty.conf", "<zodb>\n</zodb>\n"))
        self.assertEqual(code, UNKNOWN)
        self.assertIn("no <clientstorage>", out)
        code, out, _ = run(status_main, "-C", self.write("bad.conf", "<zodb>\n"))
        self.assertEqual(code, UNKNOWN)
        self.assertIn("bad.conf", out)
        code, out, _ = run(status_main, "-C", self.file("nosuch.conf"))
        self.assertEqual(code, UNKNOWN)
        self.assertIn("cannot read", out)


class ListeningSocket:
    """A 127.0.0.1 socket that accepts and then does *behaviour*."""

    thread = None

    def __init__(self, reply=None, accept=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.address = self.sock.getsockname()
        self.reply = reply
        self.connections = []
        if accept:
            self.thread = threading.Thread(target=self.serve, daemon=True)
            self.thread.start()

    def serve(self):
        try:
            connection, _ = self.sock.accept()
        except OSError:
            return
        self.connections.append(connection)
        connection.recv(100)
        if self.reply is not None:
            connection.sendall(self.reply)
            connection.close()

    def close(self):
        self.sock.close()
        if self.thread is not None:
            self.thread.join(10)
        for connection in self.connections:
            connection.close()


class FailureMessageTests(unittest.TestCase):
    """Each way of not getting a status is named for what it is."""

    def check(self, peer, kind, *texts, **options):
        self.addCleanup(peer.close)
        with self.assertRaises(ServerUnreachable) as caught:
            status(peer.address, timeout=options.pop("timeout", 5), **options)
        self.assertEqual(caught.exception.kind, kind, caught.exception)
        for text in texts:
            self.assertIn(text, str(caught.exception))
        self.assertNotIn("sent no status", str(caught.exception))

    def test_refused(self):
        with self.assertRaises(ServerUnreachable) as caught:
            status(("127.0.0.1", free_port()), timeout=5)
        self.assertEqual(caught.exception.kind, "refused")
        self.assertIn("connection refused", str(caught.exception))

    def test_no_answer(self):
        self.check(ListeningSocket(accept=False), "timeout",
                   "no answer within 0.3 seconds", timeout=0.3)

    def test_tls_handshake_that_never_ends(self):
        import ssl
        self.check(ListeningSocket(accept=False), "timeout", "TLS handshake", "timed out",
                   timeout=0.3, ssl_context=ssl.create_default_context(),
                   server_hostname="localhost")

    def test_not_a_zeo_server(self):
        self.check(ListeningSocket(b"HTTP/1.0 400 Bad Request\r\n\r\n"), "not-zeo",
                   "not a ZEO server: it answered", "HTTP/1.0 400")

    def test_silent_close(self):
        self.check(ListeningSocket(b""), "closed", "without sending anything")

    def test_greeting_without_status(self):
        self.check(ListeningSocket(b"\0\0\0\x02Z4"), "not-zeo", "greeting b'Z4' but no status: not a ZEO 5")

    def test_a_tls_client_meets_a_plain_server(self):
        directory = tempfile.mkdtemp(prefix="zeo-tools-tls-")
        self.addCleanup(shutil.rmtree, directory)
        address, stop = zeo.server.server(path=os.path.join(directory, "Data.fs"))
        self.addCleanup(stop)
        code, out, _ = run(status_main, f"127.0.0.1:{address[1]}", "--ssl")
        self.assertEqual(code, CRITICAL)
        self.assertIn(f"no status from 127.0.0.1:{address[1]}: TLS handshake failed", out)
        self.assertIn("does not seem to speak TLS", out)
        self.assertNotIn("sent no status", out)


if __name__ == "__main__":
    unittest.main()
