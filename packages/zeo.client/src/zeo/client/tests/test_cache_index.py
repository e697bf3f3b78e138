"""Tests of the two-layer record index (zeo.client.cache.index)."""
import unittest

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import precondition
from hypothesis.stateful import rule

from zeo.client.cache.errors import CacheConsistencyError
from zeo.client.cache.errors import CacheCorruptError
from zeo.client.cache.index import Entry
from zeo.client.cache.index import RecordIndex

OIDS = st.integers(min_value=0, max_value=2**64 - 1) | st.integers(1, 8)
STARTS = st.integers(min_value=1, max_value=40)


class IndexMachine(RuleBasedStateMachine):
    """RecordIndex against a plain dict; saving and reloading the image
    moves entries from the overlay into the base at random moments."""

    def __init__(self):
        super().__init__()
        self.index = RecordIndex()
        self.model = {}          # (oid, start) -> [end, offset, size]
        self.offset = 0

    def current_of(self, oid):
        for (o, s), (end, off, size) in self.model.items():
            if o == oid and end == 0:
                return Entry(s, 0, off, size)
        return None

    @rule(oid=OIDS, start=STARTS, current=st.booleans(),
          size=st.integers(1, 2**32 - 1))
    def add(self, oid, start, current, size):
        if (oid, start) in self.model:
            with self.assertRaises_(CacheConsistencyError):
                self.index.add(oid, start, 0, 0, 1)
            return
        end = 0 if current and self.current_of(oid) is None else start + 1
        self.offset += 1
        self.index.add(oid, start, end, self.offset, size)
        self.model[(oid, start)] = [end, self.offset, size]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        end, off, size = self.model.pop(key)
        self.assertEqual_(self.index.remove(*key),
                          Entry(key[1], end, off, size))
        self.assertEqual_(self.index.remove(*key), None)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def set_end(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.index.set_end(key[0], key[1], key[1] + 7)
        self.model[key][0] = key[1] + 7

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def refs(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.assertEqual_(self.index.take_ref(*key), False)
        self.index.touch(*key)
        self.assertEqual_(self.index.take_ref(*key), True)
        self.assertEqual_(self.index.take_ref(*key), False)

    @rule()
    def reload(self):
        self.index = RecordIndex.from_image(bytearray(self.index.image()))

    @invariant()
    def agrees(self):
        self.assertEqual_(len(self.index), len(self.model))
        self.assertEqual_(self.index.nbytes,
                          sum(v[2] for v in self.model.values()))
        self.assertEqual_(
            sorted(self.index),
            sorted((o, s, e, off, size)
                   for (o, s), (e, off, size) in self.model.items()))
        for (oid, start), (end, off, size) in self.model.items():
            self.assertEqual_(self.index.find(oid, start),
                              Entry(start, end, off, size))
            self.assertEqual_(self.index.current(oid), self.current_of(oid))
            revs = sorted(self.index.revisions(oid))
            self.assertEqual_(revs, sorted(
                Entry(s, e, o_, z) for (o, s), (e, o_, z)
                in self.model.items() if o == oid))
        self.assertIsNone_(self.index.find(12345678, 99))
        self.assertIsNone_(self.index.current(12345678))

    # unittest-style helpers (a state machine is not a TestCase)
    def assertEqual_(self, a, b):
        if a != b:
            raise AssertionError(f'{a!r} != {b!r}')

    def assertIsNone_(self, a):
        self.assertEqual_(a, None)

    def assertRaises_(self, exc):
        return _Raises(exc)


class _Raises:

    def __init__(self, exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None:
            raise AssertionError(f'{self.exc.__name__} not raised')
        return issubclass(typ, self.exc)


class IndexProperties(IndexMachine.TestCase):
    settings = settings(max_examples=40, stateful_step_count=40,
                        deadline=None, database=None)


class RecordIndexTests(unittest.TestCase):

    def test_empty_image(self):
        image = RecordIndex().image()
        index = RecordIndex.from_image(bytearray(image))
        self.assertEqual(len(index), 0)
        self.assertIsNone(index.current(1))
        self.assertEqual(index.revisions(1), [])

    def test_image_is_sorted_and_compact(self):
        index = RecordIndex()
        for oid in (5, 1, 3):
            index.add(oid, 2, 0, oid * 100, 64)
        index.add(1, 1, 2, 10, 64)
        image = index.image()
        self.assertEqual(len(image), 24 + 4 * 36)
        loaded = RecordIndex.from_image(bytearray(image))
        self.assertEqual(list(loaded), [(1, 1, 2, 10, 64), (1, 2, 0, 100, 64),
                                        (3, 2, 0, 300, 64),
                                        (5, 2, 0, 500, 64)])

    def test_damaged_image(self):
        image = bytearray(RecordIndex().image())
        with self.assertRaises(CacheCorruptError):
            RecordIndex.from_image(image + b'x', 99)

    def test_set_end_of_unknown(self):
        with self.assertRaises(CacheConsistencyError):
            RecordIndex().set_end(1, 2, 3)
