import unittest

from ZODB import POSException

from zeo.protocol.msgpack_codec import MsgpackCodec
from zeo.protocol.pickle_codec import PickleCodec
from zeo.protocol.remote_errors import RemoteError
from zeo.protocol.remote_errors import error_reply
from zeo.protocol.tests.support import CONFLICT_PAYLOAD
from zeo.protocol.tests.support import OID
from zeo.protocol.tests.support import REFERENCE_MESSAGES
from zeo.protocol.tests.support import TID1
from zeo.protocol.tests.support import TID2
from zeo.protocol.zodb_errors import zodb_error_builders
from zeo.protocol.zodb_errors import zodb_error_table


class ZodbErrorTableTests(unittest.TestCase):

    def setUp(self):
        self.table = zodb_error_table()

    def through_the_wire(self, exc):
        """exc -> error reply -> both encodings -> rebuilt exceptions."""
        for codec in (MsgpackCodec(), PickleCodec()):
            reply = codec.decode(codec.encode(error_reply(9, exc)))
            yield self.table.from_reply(reply)

    def test_reference_table_names(self):
        names = set(zodb_error_builders())
        for name in (
            "ConflictError", "ReadConflictError", "BTreesConflictError",
            "MultipleUndoErrors", "POSKeyError", "ReadOnlyError",
            "StorageTransactionError",
        ):
            self.assertIn(f"ZODB.POSException.{name}", names)
        self.assertIn("builtins.KeyError", self.table)

    def test_reference_conflict_error_bytes(self):
        # Captured from a reference server; decode, then rebuild.
        for codec, index in ((PickleCodec(), 2), (MsgpackCodec(), 3)):
            framed = REFERENCE_MESSAGES["error_ConflictError"][index]
            exc = self.table.from_reply(codec.decode(framed[4:]))
            self.assertIs(type(exc), POSException.ConflictError)
            self.assertEqual(exc.oid, OID)
            self.assertEqual(tuple(exc.serials), (TID2, TID1))
            self.assertEqual(exc.message, CONFLICT_PAYLOAD["message"])
            self.assertIsNone(exc.class_name)

    def test_conflict_errors(self):
        for cls in (POSException.ConflictError, POSException.ReadConflictError):
            original = cls(oid=OID, serials=(TID2, TID1))
            original.class_name = "ZODB.tests.MinPO.MinPO"
            for exc in self.through_the_wire(original):
                self.assertIs(type(exc), cls)
                self.assertEqual((exc.oid, tuple(exc.serials)), (OID, (TID2, TID1)))
                self.assertEqual(exc.class_name, "ZODB.tests.MinPO.MinPO")
                self.assertEqual(str(exc), str(original))

    def test_btrees_conflict_error(self):
        for exc in self.through_the_wire(POSException.BTreesConflictError(1, 2, 3, 4)):
            self.assertIs(type(exc), POSException.BTreesConflictError)
            self.assertEqual((exc.p1, exc.p2, exc.p3, exc.reason), (1, 2, 3, 4))

    def test_multiple_undo_errors(self):
        original = POSException.MultipleUndoErrors(
            [(OID, POSException.UndoError("can't undo", OID))]
        )
        for exc in self.through_the_wire(original):
            self.assertIs(type(exc), POSException.MultipleUndoErrors)
            [(oid, inner)] = exc._errs
            self.assertEqual(oid, OID)
            self.assertIs(type(inner), POSException.UndoError)
            self.assertEqual(str(inner), str(POSException.UndoError("can't undo", OID)))

    def test_args_style_errors(self):
        for original in (
            POSException.POSKeyError(OID),
            POSException.ReadOnlyError(),
            POSException.StorageTransactionError(None, 12345),
        ):
            for exc in self.through_the_wire(original):
                self.assertIs(type(exc), type(original))
                self.assertEqual(exc.args, original.args)

    def test_malformed_payloads_become_remote_errors(self):
        exc = self.table.build("ZODB.POSException.ConflictError", ("not", "a dict"))
        self.assertIs(type(exc), RemoteError)
        exc = self.table.build("ZODB.POSException.MultipleUndoErrors", {})
        self.assertIs(type(exc), RemoteError)
