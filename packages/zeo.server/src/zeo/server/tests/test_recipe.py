"""The buildout recipe, in a real buildout outside the monorepo.

The outside buildout uses the monorepo's develop eggs (our packages, only
read: installing them again takes seconds per run), eggs directory and
pins, so it runs without the network (never through find-links: that would
make buildout scan the whole package index).
"""

import os
import pwd
import shutil
import ssl
import subprocess
import tempfile
import textwrap
import unittest

import trustme

from zeo.server import zconfig
from zeo.server.tests.rawclient import connect_when_ready
from zeo.server.tests.support import CHECKOUT
from zeo.server.tests.support import free_port

Z64 = b"\0" * 8


@unittest.skipIf(CHECKOUT is None or not (CHECKOUT / "bin" / "buildout").exists(),
                 "needs the monorepo's buildout (python3 bootstrap.py)")
class RecipeTests(unittest.TestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="zeo-recipe-")
        self.port = free_port()

    def tearDown(self):
        script = os.path.join(self.directory, "bin", "myzeo")
        if os.path.exists(script):
            subprocess.run([script, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.directory)

    def buildout(self, parts, part=None, fails=False):
        """Run buildout with the part [myzeo] (by default, ours with the test's
        port); return its output. *fails*: expect it to fail."""
        if part is None:
            part = f"""\
                address = 127.0.0.1:{self.port}
                transaction-timeout = 20
                """
        config = os.path.join(self.directory, "buildout.cfg")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                [buildout]
                extends = {CHECKOUT}/versions.cfg
                develop-eggs-directory = {CHECKOUT}/develop-eggs
                eggs-directory = {CHECKOUT}/eggs
                allow-picked-versions = false
                newest = false
                parts = {parts}

                [myzeo]
                recipe = zeo.server
                """) + textwrap.dedent(part))
        result = subprocess.run(
            [str(CHECKOUT / "bin" / "buildout"), "-N", "-c", config],
            cwd=self.directory, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        if fails:
            self.assertNotEqual(result.returncode, 0, output)
        else:
            self.assertEqual(result.returncode, 0, output)
        return output

    def control(self, action):
        return subprocess.run([os.path.join(self.directory, "bin", "myzeo"), action],
                              capture_output=True, text=True, timeout=120)

    def connect(self):
        return connect_when_ready(("127.0.0.1", self.port))

    def test_install_run_and_uninstall_keeping_the_data(self):
        self.buildout("myzeo")
        config = os.path.join(self.directory, "parts", "myzeo", "zeo.conf")
        with open(config) as f:
            text = f.read()
        self.assertIn(f"address 127.0.0.1:{self.port}", text)
        self.assertIn("transaction-timeout 20", text)

        started = self.control("start")
        self.assertIn("daemon process started", started.stdout, started.stderr)
        client = self.connect()
        oid = client.call("new_oids", 1)[0]
        client.commit(1, [(oid, Z64, b"kept")])
        client.close()
        self.assertIn("program running", self.control("status").stdout)
        self.assertIn("daemon process stopped", self.control("stop").stdout)

        data = os.path.join(self.directory, "var", "myzeo", "Data.fs")
        self.assertTrue(os.path.exists(data))
        self.buildout("")    # uninstall the part
        self.assertFalse(os.path.exists(os.path.join(self.directory, "parts", "myzeo")))
        self.assertFalse(os.path.exists(os.path.join(self.directory, "bin", "myzeo")))
        self.assertTrue(os.path.exists(data))

    def test_a_misspelled_option_fails_naming_it(self):
        output = self.buildout("myzeo", f"""\
            address = 127.0.0.1:{self.port}
            transaction-timout = 20
            """, fails=True)
        self.assertIn("unknown option 'transaction-timout'; did you mean"
                      " 'transaction-timeout'?", output)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "bin", "myzeo")))

    def test_options_refused_with_what_to_do(self):
        for part, message in [
                ("address = 1\nzeo-address = 2\n", "'zeo-address' and 'address'"),
                ("monitor-address = 8200\n", "there is no monitor server"),
                ("authentication-database = auth\n", "use TLS client certificates"),
                ("zeo-conf = my.conf\nzeo-log-level = debug\n",
                 "would be ignored: zeo-log-level"),
                ("zeopack = /usr/bin/mypack\n", "not supported"),
                ("pack-days = a week\n", "pack-days must be a number of days"),
        ]:
            with self.subTest(part=part):
                self.assertIn(message, self.buildout("myzeo", part, fails=True))

    def test_zeo_conf_of_ones_own(self):
        own = os.path.join(self.directory, "own.conf")
        with open(own, "w") as f:
            f.write(f"<zeo>\n address 127.0.0.1:{self.port}\n</zeo>\n"
                    "<mappingstorage main>\n</mappingstorage>\n")
        self.buildout("myzeo", f"""\
            zeo-conf = own.conf
            zeo-address = {self.port}
            status-script-name = zeo-state
            zeopack-script-name =
            repozo =
            relative-paths = true
            """)
        config = os.path.join(self.directory, "parts", "myzeo", "zeo.conf")
        settings = zconfig.load(config)
        self.assertEqual(settings.address, ("127.0.0.1", self.port))
        self.assertEqual(list(settings.storage_factories), ["main"])
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "bin"))),
                         ["myzeo", "zeo-state"])
        with open(os.path.join(self.directory, "bin", "zeo-state")) as f:
            self.assertIn("base = os.path.dirname", f.read())
        state = self.script("zeo-state", "--timeout", "2")   # no server: CRITICAL
        self.assertEqual(state.returncode, 2, state.stdout + state.stderr)
        self.assertIn(f"CRITICAL: no status from 127.0.0.1:{self.port}", state.stdout)

    def test_no_new_database_beside_plone_recipe_zeoserver_data(self):
        # A part that was plone.recipe.zeoserver's with its default layout.
        os.makedirs(os.path.join(self.directory, "var", "filestorage"))
        open(os.path.join(self.directory, "var", "filestorage", "Data.fs"), "w").close()
        output = self.buildout("myzeo", "", fails=True)
        self.assertIn("add 'file-storage = filestorage/Data.fs'", output)

    def test_a_plone_recipe_zeoserver_part(self):
        """A part written for plone.recipe.zeoserver, with only the recipe
        line changed: its layout, log, runner settings, extra zeo.conf text,
        and a zeopack script that packs the running server."""
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.buildout("myzeo", f"""\
            zeo-address = {self.port}
            file-storage = filestorage/Main.fs
            zeo-log = log/server.log
            zeo-log-level = debug
            zeo-log-format = %(levelname)s %(message)s
            socket-name = ${{buildout:directory}}/run/zeo.zdsock
            effective-user = {user}
            pack-days = 3
            pack-gc = false
            max-connections = 50
            zeo-conf-additional =
                <filestorage other>
                  path ${{buildout:directory}}/var/filestorage/Other.fs
                </filestorage>
            """)
        var = os.path.join(self.directory, "var")
        config = os.path.join(self.directory, "parts", "myzeo", "zeo.conf")
        settings = zconfig.load(config)
        self.assertEqual(settings.address, ("127.0.0.1", self.port))
        self.assertEqual(sorted(settings.storage_factories), ["1", "other"])
        self.assertEqual(settings.pid_filename, os.path.join(var, "myzeo.pid"))
        self.assertEqual(settings.runner.user, user)
        self.assertEqual(settings.config.max_connections, 50)   # any <zeo> key
        self.assertEqual(settings.runner.socket_name,
                         os.path.join(self.directory, "run", "zeo.zdsock"))
        with open(config) as f:
            text = f.read()
        for line in ["  level debug", f"    path {var}/log/server.log",
                     "    format %(levelname)s %(message)s",
                     f"  path {var}/filestorage/Main.fs",
                     f"  blob-dir {var}/blobstorage", "  pack-gc false"]:
            self.assertIn(line + "\n", text)

        self.assertIn("daemon process started", self.control("start").stdout)
        client = self.connect()
        oid = client.call("new_oids", 1)[0]
        serial = client.commit(1, [(oid, Z64, b"old")])
        client.commit(2, [(oid, serial, b"new")])
        client.close()
        status = self.script("myzeo-status")
        self.assertIn("OK: storage 1:", status.stdout)
        self.assertIn("storage other:", status.stdout)
        data = os.path.join(var, "filestorage", "Main.fs")
        size = os.path.getsize(data)
        pack = self.script("zeopack")      # pack-days 3: keeps everything
        self.assertEqual(pack.returncode, 0, pack.stdout + pack.stderr)
        self.assertEqual(os.path.getsize(data), size)
        pack = self.script("zeopack", "-D", "0")
        self.assertEqual(pack.returncode, 0, pack.stdout + pack.stderr)
        self.assertLess(os.path.getsize(data), size)
        self.assertTrue(os.path.exists(data + ".old"))
        with open(os.path.join(var, "log", "server.log")) as f:
            self.assertIn("\nINFO ", "\n" + f.read())
        self.assertIn("daemon process stopped", self.control("stop").stdout)

        self.buildout("")    # uninstall the part
        for script in ("myzeo", "myzeo-status", "zeopack", "repozo"):
            self.assertFalse(os.path.exists(os.path.join(self.directory, "bin", script)))
        self.assertTrue(os.path.exists(data))

    def tls_files(self):
        """trustme certificates in the buildout directory: the server's
        (signed by one authority) and a client's (signed by another, the
        one the server's ssl-authenticate names); a client context."""
        server_ca, client_ca = trustme.CA(), trustme.CA()
        files = {name: os.path.join(self.directory, name) for name in
                 ("server.pem", "server-ca.pem", "client.pem", "client.key",
                  "client-ca.pem")}
        server_ca.issue_cert("localhost", "127.0.0.1") \
            .private_key_and_cert_chain_pem.write_to_path(files["server.pem"])
        server_ca.cert_pem.write_to_path(files["server-ca.pem"])
        client = client_ca.issue_cert("ops@example.com")
        client.cert_chain_pems[0].write_to_path(files["client.pem"])
        client.private_key_pem.write_to_path(files["client.key"])
        client_ca.cert_pem.write_to_path(files["client-ca.pem"])
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        server_ca.configure_trust(context)
        client.configure_cert(context)
        return context

    def test_a_tls_part_without_client_certificate_says_what_to_set(self):
        self.tls_files()
        output = self.buildout("myzeo", f"""\
            address = 127.0.0.1:{self.port}
            ssl-certificate = server.pem
            ssl-authenticate = client-ca.pem
            """)
        self.assertIn("no zeopack or status script", output)
        for option in ("client-ssl-certificate", "client-ssl-key", "client-ssl-ca"):
            self.assertIn(option, output)
        self.assertEqual(sorted(os.listdir(os.path.join(self.directory, "bin"))),
                         ["myzeo", "myzeo-repozo"])
        for part, message in [
                ("client-ssl-certificate = client.pem\n", "does not"),
                ("ssl-certificate = server.pem\nssl-authenticate = client-ca.pem\n"
                 "client-ssl-key = client.key\n", "client-ssl-key needs"),
        ]:
            with self.subTest(part=part):
                self.assertIn(message, self.buildout("myzeo", part, fails=True))

    def test_a_tls_part_s_scripts_speak_tls(self):
        """The status and pack scripts of a TLS part present the part's
        client certificate and check the server's against client-ssl-ca."""
        context = self.tls_files()
        self.buildout("myzeo", f"""\
            address = 127.0.0.1:{self.port}
            ssl-certificate = server.pem
            ssl-authenticate = ${{buildout:directory}}/client-ca.pem
            client-ssl-certificate = client.pem
            client-ssl-key = client.key
            client-ssl-ca = server-ca.pem
            client-ssl-server-hostname = localhost
            pack-gc = false
            """)
        started = self.control("start")
        self.assertIn("daemon process started", started.stdout, started.stderr)
        client = connect_when_ready(("127.0.0.1", self.port), ssl_context=context,
                                    server_hostname="localhost")
        oid = client.call("new_oids", 1)[0]
        serial = client.commit(1, [(oid, Z64, b"old")])
        client.commit(2, [(oid, serial, b"new")])
        client.close()
        status = self.script("myzeo-status")
        self.assertEqual(status.returncode, 0, status.stdout + status.stderr)
        self.assertIn("OK: storage 1:", status.stdout)
        data = os.path.join(self.directory, "var", "myzeo", "Data.fs")
        size = os.path.getsize(data)
        pack = self.script("myzeo-zeopack", "-D", "0")
        self.assertEqual(pack.returncode, 0, pack.stdout + pack.stderr)
        self.assertLess(os.path.getsize(data), size)
        # The command line comes after the part's options: a wrong authority
        # given there is the one used, and the handshake fails.
        wrong = self.script("myzeo-status", "--ssl-ca", os.path.join(
            self.directory, "client-ca.pem"), "--timeout", "5")
        self.assertEqual(wrong.returncode, 2, wrong.stdout + wrong.stderr)
        self.assertIn("TLS", wrong.stdout)

    def script(self, name, *args):
        return subprocess.run([os.path.join(self.directory, "bin", name), *args],
                              capture_output=True, text=True, timeout=120)


if __name__ == "__main__":
    unittest.main()
