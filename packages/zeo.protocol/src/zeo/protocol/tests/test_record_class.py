"""``record_class.pickle_metadata`` reads a record's class without running
it; ``zodb_errors.neutralise_get_pickle_metadata`` installs it in ZODB."""

import os
import pickle
import struct
import tempfile
import unittest

from zeo.protocol.record_class import pickle_metadata
from zeo.protocol.zodb_errors import neutralise_get_pickle_metadata


def text(value: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(value)) + value


class PickleMetadataTests(unittest.TestCase):

    def test_names(self):
        self.assertEqual(pickle_metadata(pickle.dumps(unittest.TestCase, 3) + b"N."),
                         ("unittest.case", "TestCase"))
        self.assertEqual(pickle_metadata(pickle.dumps(("a.b", "C"), 3)), ("a.b", "C"))
        self.assertEqual(pickle_metadata(b"garbage"), ("", ""))
        self.assertEqual(pickle_metadata(None), ("", ""))

    def test_runs_nothing(self):
        with tempfile.TemporaryDirectory() as directory:
            marker = os.path.join(directory, "MARKER")
            # Not a plain GLOBAL first: ZODB's own function unpickles this.
            gadget = (b"\x80\x02N0cposix\nsystem\n" + text(b"touch " + marker.encode())
                      + b"\x85R.")
            self.assertEqual(pickle_metadata(gadget), ("posix", "system"))
            self.assertFalse(os.path.exists(marker))

    def test_neutralise(self):
        import ZODB.utils
        self.addCleanup(setattr, ZODB.utils, "get_pickle_metadata",
                        ZODB.utils.get_pickle_metadata)
        ZODB.utils.get_pickle_metadata = lambda data: ("un", "safe")
        neutralise_get_pickle_metadata()
        neutralise_get_pickle_metadata()
        self.assertIs(ZODB.utils.get_pickle_metadata, pickle_metadata)
        from ZODB.POSException import ConflictError
        error = ConflictError(data=pickle.dumps(("a.b", "C"), 3))
        self.assertEqual(error.class_name, "a.b.C")
