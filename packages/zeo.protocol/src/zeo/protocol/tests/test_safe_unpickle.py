"""Hostile pickles are refused and nothing in them runs.

Each gadget, if it ran, would create a marker file; every test checks the
marker is still absent.
"""

import copyreg
import os
import builtins
import pickle
import struct
import subprocess
import sys
import tempfile
import types
import unittest

import zeo.protocol
from zeo.protocol.errors import RemoteProtocolError
from zeo.protocol.safe_unpickle import client_pickle_globals
from zeo.protocol.safe_unpickle import make_loads
from zeo.protocol.safe_unpickle import safe_loads
from zeo.protocol.safe_unpickle import scan_pickle
from zeo.protocol.safe_unpickle import server_pickle_globals


def unicode_arg(text):
    """SHORT_BINUNICODE for short ASCII *text*."""
    data = text.encode("ascii")
    return b"\x8c" + bytes([len(data)]) + data


class GadgetTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.marker = os.path.join(self.tmp.name, "ran")
        self.touch = f"touch {self.marker}"

    def tearDown(self):
        self.tmp.cleanup()

    def assertRefused(self, data, loads=safe_loads):
        with self.assertRaises(RemoteProtocolError):
            loads(data)
        self.assertFalse(os.path.exists(self.marker), "the gadget ran!")

    def test_builtins_exec_via_GLOBAL(self):
        code = f"open({self.marker!r}, 'w').close()"
        self.assertRefused(b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR.")

    def test_builtins_eval_via_STACK_GLOBAL(self):
        code = f"open({self.marker!r}, 'w').close()"
        self.assertRefused(
            b"\x80\x04" + unicode_arg("builtins") + unicode_arg("eval") + b"\x93"
            + unicode_arg(code) + b"\x85R."
        )

    def test_builtins_getattr_chain(self):
        # getattr(__import__('os'), 'system')(...)
        self.assertRefused(
            b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
            + self.touch.encode() + b"\ntR."
        )

    def test_os_system(self):
        for module in (b"os", b"posix"):
            with self.subTest(module=module):
                self.assertRefused(
                    b"c" + module + b"\nsystem\n(V" + self.touch.encode() + b"\ntR."
                )

    def test_subprocess_popen(self):
        self.assertRefused(
            b"csubprocess\nPopen\n((Vtouch\nV" + self.marker.encode() + b"\nltR."
        )

    def test_copyreg_reconstructor(self):
        self.assertRefused(
            b"ccopyreg\n_reconstructor\n(cos\n_wrap_close\ncbuiltins\nobject\nNtR."
        )
        self.assertRefused(b"ccopy_reg\n_reconstructor\n.")

    def test_reduce_gadget_made_by_pickle_itself(self):
        marker = self.marker

        class Gadget:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        for protocol in (0, 2, 3, 4, 5):
            with self.subTest(protocol=protocol):
                self.assertRefused(pickle.dumps(Gadget(), protocol))

    def test_INST_and_OBJ(self):
        self.assertRefused(b"(V" + self.touch.encode() + b"\nios\nsystem\n.")
        self.assertRefused(b"(cos\nsystem\nV" + self.touch.encode() + b"\no.")

    def test_NEWOBJ_needs_a_class(self):
        self.assertRefused(b"\x80\x02cos\n_wrap_close\n)\x81.")

    def test_persistent_ids(self):
        self.assertRefused(b"Pfoo\n.")
        self.assertRefused(b"\x80\x03X\x03\x00\x00\x00fooQ.")

    def test_extension_codes_with_an_empty_registry(self):
        self.assertRefused(b"\x80\x02\x82\x01.")
        self.assertRefused(b"\x80\x02\x83\x01\x02.")
        self.assertRefused(b"\x80\x02\x84\x01\x02\x03\x04.")

    def test_extension_codes_with_a_registered_and_warmed_code(self):
        # Once any ordinary unpickler has resolved an extension code, the C
        # unpickler serves it from copyreg's cache without asking
        # find_class.  The pre-scan must catch it.
        # opcode: (argument format, code, a global that runs a shell command)
        cases = {
            b"\x82": ("<B", 0xF1, ("os", "system")),
            b"\x83": ("<H", 0xF1F2, ("subprocess", "getoutput")),
            b"\x84": ("<i", 0x0F1F2F3F, ("subprocess", "getstatusoutput")),
        }
        try:
            for opcode, (fmt, code, (module, name)) in cases.items():
                copyreg.add_extension(module, name, code)
                arg = struct.pack(fmt, code)
                warmed = pickle.loads(b"\x80\x02" + opcode + arg + b".")
                self.assertTrue(callable(warmed))
                gadget = b"\x80\x02" + opcode + arg + unicode_arg(self.touch) + b"\x85R."
                with self.subTest(opcode=opcode):
                    self.assertRefused(gadget)
                    self.assertRefused(gadget, make_loads(client_pickle_globals()))
        finally:
            for fmt, code, (module, name) in cases.values():
                try:
                    copyreg.remove_extension(module, name, code)
                except ValueError:
                    pass

    def test_allowed_global_is_the_only_door(self):
        loads = make_loads({("zeo_test", "Thing"): complex})
        self.assertEqual(loads(b"czeo_test\nThing\n(K\x01K\x02tR."), 1 + 2j)
        self.assertRefused(b"czeo_test\nOther\n.", loads)
        self.assertRefused(b"cbuiltins\ncomplex\n.", loads)


class SafeLoadsTests(unittest.TestCase):

    def test_plain_values(self):
        value = (1, False, "x", (b"\0" * 8, [1, 2.5], {"k": None}))
        for protocol in (3, 4, 5):
            self.assertEqual(safe_loads(pickle.dumps(value, protocol)), value)
        value = (1, False, "x", ("str", [1, 2.5], {"k": None}))
        for protocol in (0, 1, 2):
            self.assertEqual(safe_loads(pickle.dumps(value, protocol)), value)

    def test_memo_opcodes_are_fine(self):
        shared = (b"oid", b"tid")
        value = (shared, False, "loadBefore", shared)
        self.assertEqual(safe_loads(pickle.dumps(value, 3)), value)

    def test_trailing_and_truncated_data(self):
        data = pickle.dumps((1, 2), 3)
        for bad in (data + b".", data + b"\x00", data[:-1], b""):
            with self.subTest(bad=bad):
                with self.assertRaises(RemoteProtocolError):
                    safe_loads(bad)

    def test_default_allow_lists(self):
        containers = {("builtins", name): getattr(builtins, name)
                      for name in ("dict", "list", "tuple", "set", "frozenset")}
        self.assertEqual(dict(client_pickle_globals()), containers)
        # ZopeUndo isn't installed in the test environment.
        self.assertEqual(dict(server_pickle_globals()), containers)

    def test_containers_rebuild_but_run_nothing_else(self):
        class Extension(dict):
            def __reduce__(self):
                return dict, (tuple(self.items()),)

        data = pickle.dumps({"ext": Extension(a=1), "s": {1, 2}}, 3)
        self.assertEqual(safe_loads(data, server_pickle_globals()),
                         {"ext": {"a": 1}, "s": {1, 2}})
        for name in ("getattr", "eval", "bytearray", "bytes", "open"):
            with self.subTest(name=name), self.assertRaises(RemoteProtocolError):
                safe_loads(f"cbuiltins\n{name}\n.".encode(), server_pickle_globals())

    def test_server_allows_zopeundo_prefix_when_installed(self):
        package = types.ModuleType("ZopeUndo")
        module = types.ModuleType("ZopeUndo.Prefix")

        class Prefix:
            def __init__(self, value):
                self.value = value

        Prefix.__module__ = "ZopeUndo.Prefix"
        module.Prefix = Prefix
        package.Prefix = module
        saved = {name: sys.modules.get(name) for name in ("ZopeUndo", "ZopeUndo.Prefix")}
        sys.modules.update({"ZopeUndo": package, "ZopeUndo.Prefix": module})
        server_pickle_globals.cache_clear()
        try:
            allowed = server_pickle_globals()
            self.assertEqual(allowed[("ZopeUndo.Prefix", "Prefix")], Prefix)
            prefix = safe_loads(b"cZopeUndo.Prefix\nPrefix\n(V/a\ntR.", allowed)
            self.assertIsInstance(prefix, Prefix)
            self.assertEqual(prefix.value, "/a")
        finally:
            for name, old in saved.items():
                if old is None:
                    sys.modules.pop(name, None)
                else:  # pragma: no cover
                    sys.modules[name] = old
            server_pickle_globals.cache_clear()


class NestingTests(unittest.TestCase):

    @staticmethod
    def tuple_key_bomb(depth):
        """A dict whose key is *depth* nested 1-tuples (1 byte per level)."""
        return b"\x80\x03}" + b")" + b"\x85" * depth + b"K\x01s."

    def test_scan_measures_tuple_depth(self):
        scan_pickle(self.tuple_key_bomb(19), max_depth=20)
        with self.assertRaises(RemoteProtocolError):
            scan_pickle(self.tuple_key_bomb(21), max_depth=20)

    def test_scan_follows_marks_memo_and_updates(self):
        nested = ((((1,),),),)
        for protocol in range(6):
            data = pickle.dumps({"k": [nested, {"x": nested}]}, protocol)
            with self.subTest(protocol=protocol):
                scan_pickle(data, max_depth=16)
                with self.assertRaises(RemoteProtocolError):
                    scan_pickle(data, max_depth=3)

    def test_scan_accepts_real_big_messages(self):
        oids = [struct.pack(">Q", i) for i in range(20000)]
        for protocol in (3, 4, 5):
            data = pickle.dumps((0, True, "invalidateTransaction", (b"t" * 8, oids)), protocol)
            self.assertGreater(len(data), 10_000)
            self.assertEqual(safe_loads(data)[3][1], oids)
        big = pickle.dumps((1, 0, ".reply", (b"x" * 100_000, b"t" * 8, None)), 3)
        self.assertEqual(len(safe_loads(big)[3][0]), 100_000)

    def test_scan_refuses_malformed_streams(self):
        for data in (b"\xff", b"\x80\x03X\xff\xff\xff\xff", b"\x80\x03t.", b"\x80\x03Vabc"):
            with self.subTest(data=data):
                with self.assertRaises(RemoteProtocolError):
                    scan_pickle(data)

    def test_deep_tuple_key_is_refused_without_crashing(self):
        # Unguarded, CPython segfaults hashing this key (C recursion).  Run it
        # in a child process so that a regression can't take the test run
        # down with it.
        src = os.path.dirname(os.path.dirname(os.path.dirname(zeo.protocol.__file__)))
        script = (
            "import sys\n"
            f"sys.path.insert(0, {src!r})\n"
            "from zeo.protocol import safe_loads, RemoteProtocolError\n"
            "data = b'\\x80\\x03}' + b')' + b'\\x85' * 300000 + b'K\\x01s.'\n"
            "try:\n"
            "    safe_loads(data)\n"
            "except RemoteProtocolError as exc:\n"
            "    print('refused:', exc)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("refused: refused pickle: nesting deeper than", result.stdout)
