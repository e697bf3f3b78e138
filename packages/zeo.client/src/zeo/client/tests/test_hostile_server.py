"""A hostile server must not run code in the client (issue #17, defect 1).

* probes over a real loopback socket: a fake server that greets ``Z5``
  and answers ``register`` with pickles that construct a ``ConflictError``
  whose ``data`` is a pickle calling ``posix.system`` -- the marker file
  it would create never appears;
* the same doors, and the other opcodes that call or change objects
  (REDUCE, NEWOBJ, NEWOBJ_EX, BUILD, INST/OBJ), on every kind of global
  the client's allow-list admits;
* interop: what the reference ZEO 6.2 server pickles for ZODB errors (its
  own encoder) still becomes the right exception;
* the ``accept_pickle_servers`` option and its ``<clientstorage>`` key.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import unittest

import ZODB.utils
from ZODB import POSException
from ZODB.POSException import ConflictError

from zeo.protocol import RemoteProtocolError
from zeo.protocol.safe_unpickle import make_loads
from zeo.protocol.record_class import pickle_metadata

from zeo.client.connections import channel as client_channel
from zeo.client.config import ClientConfig
from zeo.client.errors import PickleServerRefused
from zeo.client.storage import ClientStorage
from zeo.client.tests.hostile import (
    DrivenClient, FakeServer, binbytes, error, gadget_values, genuine_get_pickle_metadata,
    global_, marker_in, one_way, record_gadget, reply, text, wait_until)

TID = b'\x03' * 8
OID = b'\x00' * 7 + b'\x01'
RECON = global_(b'ZODB.POSException', b'_recon')
CONFLICT = global_(b'ZODB.POSException', b'ConflictError')


def tid_reply(msgid):
    return reply(msgid, binbytes(TID))


class Marker(unittest.TestCase):
    """ZODB's own (permissive) ``get_pickle_metadata`` is in place when a
    test starts, whatever ran before in this process."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='zeo-hostile-')
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.marker = marker_in(self.tmp)
        self.addCleanup(setattr, ZODB.utils, 'get_pickle_metadata',
                        ZODB.utils.get_pickle_metadata)
        ZODB.utils.get_pickle_metadata = genuine_get_pickle_metadata()

    def assertNoMarker(self):
        if os.path.exists(self.marker):
            os.unlink(self.marker)  # for the next subtest
            self.fail('the server ran code in the client')


class OverTheWireTests(Marker):
    """A fake Z5 server on 127.0.0.1 answers ``register`` with gadgets."""

    def serve(self, respond, greeting=b'Z5'):
        server = FakeServer(respond, greeting=greeting)
        self.addCleanup(server.close)
        return server

    def connect(self, server, **options):
        options.setdefault('disconnect_poll', 30)
        client = ClientStorage(server.address, wait=False, **options)
        self.addCleanup(client.close)
        return client

    def run_client_against(self, respond):
        server = self.serve(respond)
        client = self.connect(server)
        # The client drops the connection once it has read the reply.
        ended = wait_until(lambda: server.ended >= 1 or os.path.exists(self.marker))
        client.close()
        self.assertNoMarker()
        self.assertTrue(ended, 'the client kept the connection')
        return server

    def test_conflict_error_gadgets_in_the_register_error_reply(self):
        for name, value in gadget_values(self.marker).items():
            with self.subTest(name):
                def respond(msgid, method, args, value=value):
                    if method == 'register':
                        return [reply(msgid, error(b'ZODB.POSException.ConflictError', value), 2)]
                server = self.run_client_against(respond)
                self.assertEqual(server.methods(), ['register'])
                self.assertNoMarker()

    def test_gadget_as_a_result(self):
        value = gadget_values(self.marker)['reduce']
        self.run_client_against(
            lambda msgid, method, args: [reply(msgid, value)] if method == 'register' else None)
        self.assertNoMarker()

    def test_gadget_in_a_one_way_call(self):
        value = gadget_values(self.marker)['reduce']
        self.run_client_against(
            lambda msgid, method, args: [one_way(b'invalidateTransaction', b'(' + value + b't'),
                                         tid_reply(msgid)] if method == 'register' else None)
        self.assertNoMarker()

    def test_rebuilt_conflict_error_with_data(self):
        # _recon is admitted, but rebuilds without __init__: 'data' is an
        # attribute, never unpickled.
        state = b'}(' + text(b'args') + b')' + text(b'data') + binbytes(record_gadget(self.marker)) + b'u'
        value = RECON + b'(' + CONFLICT + state + b'tR'
        self.run_client_against(
            lambda msgid, method, args: [
                reply(msgid, error(b'ZODB.POSException.ConflictError', value), 2)]
            if method == 'register' else None)
        self.assertNoMarker()


class OpcodeTests(Marker):
    """Every opcode that calls or changes an object, on every kind of
    global the client admits, through the client's own allow-list."""

    def setUp(self):
        super().setUp()
        # The unpickler alone, with ZODB's metadata reader not neutralised.
        self.loads = make_loads(client_channel._PICKLE_GLOBALS)

    def load(self, value):
        return self.loads(b'\x80\x03' + value + b'.')

    def refused(self, value):
        with self.assertRaises(RemoteProtocolError):
            self.load(value)
        self.assertNoMarker()

    def test_the_reported_gadgets_are_refused(self):
        for name, value in gadget_values(self.marker).items():
            with self.subTest(name):
                self.refused(value)

    def test_error_classes_are_inert(self):
        five = b'NNNN' + binbytes(record_gadget(self.marker))
        for name, value in {
            'reduce': CONFLICT + b'(' + five + b'tR',
            'reduce, no args': CONFLICT + b')R',
            'newobj': CONFLICT + b')\x81',
            'newobj_ex': CONFLICT + b')}\x92',
            'obj': b'(' + CONFLICT + five + b'o',
            'obj, no args': b'(' + CONFLICT + b'o',
            'inst': b'(' + five + b'iZODB.POSException\nConflictError\n',
            'build': CONFLICT + b'}' + text(b'x') + b'Ns' + b'b',
            'build, slots': CONFLICT + b'N}' + text(b'_cls') + b'N' + b's\x86b',
        }.items():
            with self.subTest(name):
                self.refused(value)

    def test_rebuild_function_refuses_change(self):
        rebuild = client_channel._PICKLE_GLOBALS[('ZODB.POSException', '_recon')]
        for name, value in {
            'build': RECON + b'}' + text(b'__defaults__') + b'(Nt' + b's' + b'b',
            'build, slots': RECON + b'N}' + text(b'__call__') + b'N' + b's\x86b',
            'newobj': RECON + b')\x81',
        }.items():
            with self.subTest(name):
                self.refused(value)
        self.assertEqual(rebuild.__class__.__slots__, ())

    def test_rebuild_accepts_only_an_error_class_and_plain_state(self):
        good_state = b'}' + text(b'args') + b')s'
        for name, value in {
            'a container type': RECON + b'(' + global_(b'builtins', b'dict') + good_state + b'tR',
            'a string': RECON + b'(' + text(b'ZODB.POSException.ConflictError') + good_state + b'tR',
            'state not a dict': RECON + b'(' + CONFLICT + b')tR',
            'a dunder attribute': RECON + b'(' + CONFLICT + b'}' + text(b'__class__')
            + global_(b'builtins', b'dict') + b'stR',
            'a non-str key': RECON + b'(' + CONFLICT + b'}K\x01K\x02stR',
            'args not a tuple': RECON + b'(' + CONFLICT + b'}' + text(b'args') + b'K\x01stR',
            'three arguments': RECON + b'(' + CONFLICT + good_state + b'NtR',
            'no arguments': RECON + b')R',
        }.items():
            with self.subTest(name):
                self.refused(value)

    def test_rebuild_makes_the_instance_without_init(self):
        data = record_gadget(self.marker)
        state = (b'}(' + text(b'args') + b'(' + text(b'm') + b't' + text(b'message') + text(b'm')
                 + text(b'oid') + binbytes(OID) + text(b'serials') + b'(' + binbytes(TID)
                 + binbytes(TID) + b't' + text(b'class_name') + text(b'a.B')
                 + text(b'data') + binbytes(data) + b'u')
        error = self.load(RECON + b'(' + CONFLICT + state + b'tR')
        self.assertIs(type(error), ConflictError)
        self.assertEqual(error.args, ('m',))
        self.assertEqual((error.oid, error.serials, error.class_name), (OID, (TID, TID), 'a.B'))
        self.assertEqual(error.data, data)
        self.assertIn('oid 0x01', str(error))
        # BUILD on a fresh rebuilt error sets attributes of that instance only.
        built = self.load(RECON + b'(' + CONFLICT + b'}tR' + b'}(' + text(b'args') + b')'
                          + text(b'oid') + binbytes(OID) + b'ub')
        self.assertEqual(built.oid, OID)
        self.assertNoMarker()

    def test_containers_run_nothing(self):
        self.assertEqual(self.load(global_(b'builtins', b'dict') + b')\x81'), {})
        self.assertEqual(self.load(global_(b'builtins', b'set') + b'(](K\x01K\x02etR'), {1, 2})
        self.refused(global_(b'builtins', b'dict') + b'}' + text(b'x') + b'Nsb')
        self.refused(global_(b'builtins', b'list') + b'N}' + text(b'append') + b'N' + b's\x86b')
        self.refused(global_(b'builtins', b'tuple') + b')}' + text(b'x') + b'K\x01s\x92')

    def test_only_zodb_error_classes_are_admitted(self):
        names = {name for module, name in client_channel._PICKLE_GLOBALS
                 if module == 'ZODB.POSException'}
        self.assertIn('_recon', names)
        for name in names - {'_recon'}:
            self.assertTrue(issubclass(getattr(POSException, name), POSException.POSError), name)
        self.assertIn('MultipleUndoErrors', names)


class NeutralisedMetadataTests(Marker):

    def test_a_client_connection_neutralises_get_pickle_metadata(self):
        DrivenClient().close()
        self.assertIs(ZODB.utils.get_pickle_metadata, pickle_metadata)
        error = ConflictError(oid=OID, data=record_gadget(self.marker))
        self.assertEqual(error.class_name, 'posix.system')
        self.assertNoMarker()


class ReferenceInteropTests(unittest.TestCase):
    """What the reference ZEO 6.2 server sends over Z5 for ZODB errors
    (pickled by its own encoder) becomes the same exception in our client."""

    def setUp(self):
        from ZEO.asyncio.marshal import encoder, reduce_exception
        self.encode = encoder(b'Z5', server=True)
        self.reduce_exception = reduce_exception
        self.client = DrivenClient(b'Z5')
        self.addCleanup(self.client.close)

    def error_for(self, exc):
        msgid = self.client.call()
        self.client.feed(self.encode(msgid, 2, '.reply', self.reduce_exception(exc)))
        kind, value = self.client.outcome(msgid)
        self.assertEqual(kind, 'error')
        self.assertIs(type(value), type(exc))
        return value

    def test_conflict_errors(self):
        error = self.error_for(ConflictError(oid=OID, serials=(TID, b'\x01' * 8),
                                             data=b'cZODB.tests.MinPO\nMinPO\n.N.'))
        self.assertEqual((error.oid, error.serials), (OID, (TID, b'\x01' * 8)))
        self.assertEqual(error.class_name, 'ZODB.tests.MinPO.MinPO')
        error = self.error_for(POSException.ReadConflictError(oid=OID, serials=(TID, TID)))
        self.assertEqual(error.oid, OID)
        error = self.error_for(POSException.BTreesConflictError(1, 2, 3, 4))
        self.assertEqual((error.p1, error.reason), (1, 4))

    def test_args_errors(self):
        self.assertEqual(self.error_for(POSException.POSKeyError(OID)).args, (OID,))
        self.error_for(POSException.ReadOnlyError())
        self.assertEqual(self.error_for(
            POSException.StorageTransactionError(None, 12345)).args, (None, 12345))

    def test_undo_errors_pickled_whole(self):
        other = b'\x00' * 7 + b'\x02'
        error = self.error_for(POSException.MultipleUndoErrors(
            [(OID, POSException.UndoError('first', OID)),
             (other, POSException.UndoError('second', other))]))
        self.assertEqual([(oid, type(e), e._reason, e._oid) for oid, e in error._errs], [
            (OID, POSException.UndoError, 'first', OID),
            (other, POSException.UndoError, 'second', other)])
        self.assertIn('second', str(error))
        error = self.error_for(POSException.UndoError('why', OID))
        self.assertEqual((error._reason, error._oid), ('why', OID))

    def test_an_error_inside_a_result(self):
        msgid = self.client.call()
        self.client.feed(self.encode(msgid, 0, '.reply', [
            POSException.ConflictError(oid=OID, serials=(TID, TID))]))
        kind, value = self.client.outcome(msgid)
        self.assertEqual(kind, 'result')
        self.assertIs(type(value[0]), ConflictError)
        self.assertEqual((value[0].oid, value[0].serials), (OID, (TID, TID)))


class PickleServerOptionTests(unittest.TestCase):

    def serve(self, greeting):
        server = FakeServer(lambda msgid, method, args: [tid_reply(msgid)]
                            if method == 'register' else None, greeting=greeting)
        self.addCleanup(server.close)
        return server

    def connect(self, server, **options):
        client = ClientStorage(server.address, wait=False, **options)
        self.addCleanup(client.close)
        return client

    def test_default_accepts_pickle_servers(self):
        self.assertIs(ClientConfig.from_options(1).accept_pickle_servers, True)
        server = self.serve(b'Z5')
        self.connect(server)
        self.assertTrue(wait_until(lambda: 'register' in server.methods()))

    def test_option_values(self):
        self.assertIs(ClientConfig.from_options(
            1, accept_pickle_servers=0).accept_pickle_servers, False)
        self.assertIs(ClientConfig.from_options(
            1, accept_pickle_servers=None).accept_pickle_servers, True)
        self.assertRaises(ValueError, ClientConfig.from_options, 1, accept_pickle_servers='no')

    def test_refused(self):
        server = self.serve(b'Z5')
        with self.assertLogs('zeo.client', 'ERROR') as logged:
            self.connect(server, accept_pickle_servers=False,
                         disconnect_poll=0.2, max_disconnect_poll=0.4)
            self.assertTrue(wait_until(lambda: server.connections >= 2 and server.ended >= 2))
            # Retries keep to the backoff: no busy loop.
            time.sleep(1.0)
        self.assertLess(server.connections, 12)
        # Refused before answering the greeting: nothing was sent.
        self.assertEqual(server.answers, [])
        self.assertEqual(server.requests, [])
        text = '\n'.join(logged.output)
        self.assertIn('pickle (Z5)', text)
        self.assertIn('accept-pickle-servers', text)
        self.assertEqual(len(logged.records), 1)  # said once, not at every retry

    def test_refusing_pickle_leaves_msgpack_servers_alone(self):
        server = self.serve(b'M5')
        self.connect(server, accept_pickle_servers=False)
        self.assertTrue(wait_until(lambda: 'register' in server.methods()))

    def test_refused_by_the_protocol(self):
        client = DrivenClient(b'Z5', accept_pickle=False)
        self.assertTrue(client.channel.closed)
        self.assertIsInstance(client.channel.handshake_done.exception(), PickleServerRefused)
        self.assertEqual(client.transport.written, [])
        client.close()

    def test_zconfig_key(self):
        from zeo.client.tests.support import parse, section
        self.assertNotIn('accept_pickle_servers', parse(section('server 1')).arguments)
        for value, expected in (('false', False), ('true', True)):
            storage = parse(section('server 1', f'accept-pickle-servers {value}'))
            self.assertIs(storage.arguments['accept_pickle_servers'], expected)
