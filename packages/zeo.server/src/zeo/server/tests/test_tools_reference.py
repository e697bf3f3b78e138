"""zeo-status and zeopack side by side with the reference ZEO 6.2: our
zeo-status reads like zeo-nagios (against our server and theirs), and our
zeopack packs a reference server."""

import contextlib
import io
import os
import shutil
import tempfile
import time
import unittest

import zeo.server
from zeo.server.tests.conformance import ReferenceServer
from zeo.server.tests.support import run
from zeo.server.tools import OK, WARNING, pack_main, status_main


def reference_nagios(*args):
    from ZEO.nagios import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code or 0, out.getvalue()


def nagios_part(output):
    """What a Nagios reads: the first line, and the performance data."""
    lines = output.splitlines()
    return lines[0], [line for line in lines[1:] if line.startswith(("|", " "))]


def commit_three_revisions(address):
    import ZODB
    from ZEO.ClientStorage import ClientStorage
    db = ZODB.DB(ClientStorage(address, wait_timeout=30))
    for value in range(3):
        with db.transaction() as connection:
            connection.root.value = value
    db.close()


class SameAsZEONagios(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-tools-ref-")
        self.addCleanup(shutil.rmtree, self.directory)

    def compare(self, address, *args):
        target = f"{address[0]}:{address[1]}"
        theirs = reference_nagios(target, *args)
        code, ours, err = run(status_main, target, *args)
        self.assertEqual(code, theirs[0], ours + err)
        self.assertEqual(nagios_part(ours), nagios_part(theirs[1]))
        return code, ours

    def check_server(self, address, path):
        code, out = self.compare(address, "-m")
        self.assertEqual((code, out.splitlines()[0]), (WARNING, "Empty storage '1'|active_txns=0"))
        commit_three_revisions(address)
        code, _ = self.compare(address)
        self.assertEqual(code, OK)
        # Rates from a status file the reference wrote; then the reverse.
        status_file = os.path.join(self.directory, "status.json")
        reference_nagios(f"{address[0]}:{address[1]}", "-m", "-s", status_file)
        a_minute_ago = time.time() - 60
        os.utime(status_file, (a_minute_ago, a_minute_ago))
        code, out, _ = run(status_main, f"{address[0]}:{address[1]}", "-m", "-s", status_file,
                           "-u", "seconds")
        self.assertEqual(code, OK, out)
        self.assertIn("\n commits=0.0\n", out)
        os.utime(status_file, (a_minute_ago, a_minute_ago))
        code, out = reference_nagios(f"{address[0]}:{address[1]}", "-m", "-s", status_file)
        self.assertIn("\n commits=0.0\n", out)
        # Our zeopack packs it.
        before = os.path.getsize(path)
        code, _, err = run(pack_main, f"{address[0]}:{address[1]}")
        self.assertEqual(code, 0, err)
        self.assertLess(os.path.getsize(path), before)

    def test_against_a_reference_server(self):
        path = os.path.join(self.directory, "Data.fs")
        server = ReferenceServer(path)
        self.addCleanup(server.stop)
        self.check_server(server.address, path)

    def test_against_our_server(self):
        path = os.path.join(self.directory, "Data.fs")
        address, stop = zeo.server.server(path=path)
        self.addCleanup(stop)
        self.check_server(address, path)

    def test_tls_against_a_reference_server(self):
        import trustme
        ca = trustme.CA()
        files = {name: os.path.join(self.directory, name)
                 for name in ("server.pem", "ca.pem", "client.pem")}
        ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(
            files["server.pem"])
        ca.cert_pem.write_to_path(files["ca.pem"])
        ca.issue_cert("ops@example.com").private_key_and_cert_chain_pem.write_to_path(
            files["client.pem"])
        server = ReferenceServer(
            os.path.join(self.directory, "Data.fs"),
            options=f"  <ssl>\n    certificate {files['server.pem']}\n"
                    f"    authenticate {files['ca.pem']}\n  </ssl>\n")
        self.addCleanup(server.stop)
        target = f"127.0.0.1:{server.port}"
        tls = ["--ssl-certificate", files["client.pem"], "--ssl-ca", files["ca.pem"],
               "--ssl-server-hostname", "localhost"]
        code, out, _ = run(status_main, target, "-m", *tls)
        self.assertEqual(code, WARNING, out)
        self.assertTrue(out.startswith("Empty storage '1'|active_txns=0\n"), out)
        code, _, err = run(pack_main, target, *tls)
        self.assertEqual(code, 0, err)
        code, out, _ = run(status_main, target)
        self.assertEqual(code, 2)
        self.assertNotIn("sent no status", out)
        self.assertIn("TLS", out, out)

    def test_several_storages(self):
        from ZODB.MappingStorage import MappingStorage
        address, stop = zeo.server.server(storages={
            "1": MappingStorage(), "other": MappingStorage(), "with space": MappingStorage()})
        self.addCleanup(stop)
        code, out = self.compare(address, "-m")
        self.assertEqual(code, WARNING)
        self.assertIn(" other:connections=0", out.splitlines())
        self.assertIn(" 'with space:waiting'=0", out.splitlines())


if __name__ == "__main__":
    unittest.main()
