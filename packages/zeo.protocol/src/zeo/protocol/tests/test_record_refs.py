"""persistent_references: a record's references from its opcodes alone."""

import io
import pickle
import sys
import unittest

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from zeo.protocol.record_refs import FAST_SCAN_SIZE
from zeo.protocol.record_refs import LOAD_REFS
from zeo.protocol.record_refs import persistent_references


class Ref:
    """A persistent object as the pickler sees it: *kind* chooses the
    persistent id ZODB would write (``tuple``: ``(oid, class)``, ``bare``:
    the oid, ``weak`` and ``cross``: list-shaped ids, which are skipped)."""

    def __init__(self, oid, kind):
        self.oid = oid
        self.kind = kind


OIDS = [bytes([0] * 6 + [i // 256, i % 256]) for i in range(300)]

refs = st.builds(Ref, st.sampled_from(OIDS[:40]),
                 st.sampled_from(["tuple", "tuple", "bare", "weak", "cross"]))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=20), st.binary(max_size=20), refs)
states = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=6)),
    max_leaves=40)


def record(state, protocol=3):
    """A ZODB-like record: a class pickle and a state pickle written by
    one pickler (shared memo), and the oids its pickler persisted, in
    order (weak and cross-database ones left out, as referencesf does)."""
    persisted = []

    def persistent_id(obj):
        if type(obj) is not Ref:
            return None
        if obj.kind == "weak":
            return ["w", (obj.oid,)]
        if obj.kind == "cross":
            return ["m", ("other", obj.oid, None)]
        persisted.append(obj.oid)
        return obj.oid if obj.kind == "bare" else (obj.oid, Ref)

    file = io.BytesIO()
    pickler = pickle.Pickler(file, protocol)
    pickler.persistent_id = persistent_id
    pickler.dump((Ref, None))
    pickler.dump(state)
    return file.getvalue(), persisted


class RecordRefsTests(unittest.TestCase):

    def test_capability_name(self):
        self.assertEqual(LOAD_REFS, "load-refs")

    @settings(max_examples=300, deadline=None)
    @given(states, st.sampled_from([3, 4, 5]))
    def test_the_oids_the_pickler_persisted(self, state, protocol):
        data, persisted = record(state, protocol)
        self.assertEqual(persistent_references(data), persisted)

    @settings(max_examples=200, deadline=None)
    @given(states)
    def test_as_zodb_referencesf_finds_them(self, state):
        from ZODB.serialize import referencesf
        data, _ = record(state)
        self.assertEqual(persistent_references(data), referencesf(data))

    @settings(max_examples=100, deadline=None)
    @given(states, st.integers(min_value=0, max_value=5))
    def test_limit(self, state, limit):
        data, persisted = record(state)
        self.assertEqual(persistent_references(data, limit), persisted[:limit])

    def test_memoized_references_and_many_of_them(self):
        # The same oid object twice: the second is a BINGET of the memo.
        shared = Ref(OIDS[7], "tuple")
        data, persisted = record([shared, shared] + [Ref(oid, "tuple") for oid in OIDS[:150]])
        self.assertIn(b"h", data)
        self.assertLessEqual(len(data), FAST_SCAN_SIZE)   # walked, not searched
        self.assertEqual(persistent_references(data), persisted)
        self.assertEqual(len(persisted), 152)

    def test_objects_written_by_zodb(self):
        import transaction
        import ZODB
        from BTrees.OOBTree import OOBTree
        from persistent.list import PersistentList
        from persistent.mapping import PersistentMapping
        from ZODB.serialize import referencesf
        db = ZODB.DB(None)
        try:
            connection = db.open()
            root = connection.root()
            children = [PersistentMapping({"n": i}) for i in range(3)]
            root["list"] = PersistentList(children + [children[0]])
            root["tree"] = tree = OOBTree()
            for i in range(200):
                tree[i] = children[i % 3]
            transaction.commit()
            storage = db.storage
            data, _ = storage.load(root["list"]._p_oid)
            oids = [child._p_oid for child in children]
            self.assertEqual(persistent_references(data), oids + oids[:1])
            for oid in storage._data:   # every record: the root, the tree's
                data, _ = storage.load(oid)
                self.assertEqual(persistent_references(data), referencesf(data))
        finally:
            db.close()

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(OIDS), st.sampled_from(["tuple", "bare"]),
                              st.one_of(st.none(), st.integers(), st.text("abc"))),
                    unique_by=lambda item: item[0], max_size=30))
    def test_big_records_are_searched_with_the_same_answer(self, items):
        # Each oid once, no string that looks like a reference: as ZODB
        # writes a container.
        state = ["p" * FAST_SCAN_SIZE]
        for oid, kind, other in items:
            state += [Ref(oid, kind), other, {"k": other}]
        data, persisted = record(state)
        self.assertGreater(len(data), FAST_SCAN_SIZE)
        self.assertEqual(persistent_references(data), persisted)

    def test_a_big_container_written_by_zodb(self):
        import transaction
        import ZODB
        from persistent.list import PersistentList
        from persistent.mapping import PersistentMapping
        from ZODB.serialize import referencesf
        db = ZODB.DB(None)
        try:
            connection = db.open()
            root = connection.root()
            root["list"] = big = PersistentList(PersistentMapping() for _ in range(3000))
            transaction.commit()
            data, _ = db.storage.load(big._p_oid)
            self.assertGreater(len(data), FAST_SCAN_SIZE)
            self.assertEqual(persistent_references(data), referencesf(data))
            self.assertEqual(persistent_references(data, 5), referencesf(data)[:5])
        finally:
            db.close()

    def test_a_hostile_big_record_costs_linear_time(self):
        # Many starts of a reference whose class line never ends: each
        # attempt gives up after a bounded look, not at the end of the
        # data (4,000 looks at 1.2 MB: seconds, growing with the square).
        small = b"C\x08" + OIDS[1] + b"c" + b"x" * 300
        self.assertEqual(persistent_references(small * 4000), [])

    def test_python2_records(self):
        # ZODB under Python 2 wrote oids as SHORT_BINSTRING.
        data = b"\x80\x02cmod\nK\nq\x01.\x80\x02]q\x02(U\x08" + OIDS[3] + b"h\x01\x86Qe."
        self.assertEqual(persistent_references(data), [OIDS[3]])

    def test_no_persistent_id_opcode_no_walk(self):
        self.assertEqual(persistent_references(pickle.dumps({"a": [1, 2]}, 3)), [])
        self.assertEqual(persistent_references(b""), [])

    def test_imports_and_calls_nothing(self):
        module = "zeo_protocol_never_imported"
        gadget = (b"\x80\x03c" + module.encode() + b"\nboom\n)RC\x08" + OIDS[5]
                  + b"\x85Q.")
        self.assertEqual(persistent_references(gadget), [OIDS[5]])
        self.assertNotIn(module, sys.modules)
        system = b"cos\nsystem\n(X\x04\x00\x00\x00truetR.C\x08" + OIDS[6] + b"Q."
        self.assertEqual(persistent_references(system), [OIDS[6]])

    def test_malformed_input_ends_the_walk_with_what_was_found(self):
        data, persisted = record([Ref(OIDS[1], "tuple"), Ref(OIDS[2], "bare")])
        cut = data.index(OIDS[2])
        self.assertEqual(persistent_references(data[:cut]), persisted[:1])
        for bad in (b"Q", b"\x80\x03Q.", b"0Q", b"(Q", b"hQ", b"\xffQ", b"t",
                    b"B\xff\xff\xff\xffQ", b"T\xff\xff\xff\xffQ", b"g12x\nQ", b"u",
                    b"\x85Q", b"21Q", b"e"):
            self.assertEqual(persistent_references(bad), [], bad)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, data):
        refs = persistent_references(data)
        self.assertTrue(all(type(ref) is bytes and len(ref) == 8 for ref in refs))

    @settings(max_examples=200, deadline=None)
    @given(states, st.data())
    def test_damaged_records(self, state, draw):
        data, _ = record(state)
        data = bytearray(data + b"Q")
        for _ in range(draw.draw(st.integers(1, 5))):
            data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
        refs = persistent_references(bytes(data))
        self.assertTrue(all(type(ref) is bytes and len(ref) == 8 for ref in refs))
