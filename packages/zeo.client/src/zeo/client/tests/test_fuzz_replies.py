"""Fuzzing the client's reply decoding and error building (Hypothesis).

A real `Channel` (see `hostile.DrivenClient`: no socket, frames fed
by hand) greeted as a pickle (``Z5``) or msgpack (``M5``) server, with
calls in flight, gets a sequence of frames: replies and error replies of
every plain value, error replies the reference ZEO 6.2 server's own
encoder makes of ZODB errors (``_recon`` pickles included), class names
the table knows and names it doesn't, one-way calls, pickles that run
code in a permissive unpickler (the ZODB error-class gadgets, the
server fuzzer's hostile pickles) as whole frames or as values, random
bytes, and valid frames with bytes flipped, cut or added.  The rules:

- feeding a frame raises nothing; a frame the client can't accept closes
  the connection, and every call in flight then fails with
  ``ClientDisconnected``;
- a call gets a result, or an error of a documented type: a builtin
  exception of the error table, a ``ZODB.POSException`` class,
  ``RemoteError`` (``ServerException``) or ``ClientDisconnected`` --
  nothing else;
- the marker file a hostile pickle would create never exists (ZODB's own
  ``get_pickle_metadata`` is in place, not the neutralised one, so only
  the unpickler stands between the gadgets and the marker);
- while the connection is open, a new call still gets its reply.

`ReplyFuzzLongTests` (level 3: ``bin/test -s zeo.client -t test_fuzz_replies
-a 3``) runs twenty times as many examples.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import shutil
import tempfile
import unittest

import msgpack
import ZODB.utils
from hypothesis import given, settings
from hypothesis import strategies as st
from ZODB import POSException

from zeo.protocol import RemoteError, zodb_error_table
from zeo.protocol.remote_errors import BUILTIN_EXCEPTIONS

from zeo.client.errors import ClientDisconnected
from zeo.client.tests.hostile import (
    DrivenClient, binbytes, gadget_values, genuine_get_pickle_metadata, global_, marker_in,
    record_gadget, reply, text)
from zeo.server.tests.fuzzing import hostile_pickles, hypothesis_settings

SETTINGS = hypothesis_settings()

#: The types of error a call may fail with: the error table's (builtin
#: and ZODB.POSException, which includes transaction's TransactionError),
#: RemoteError and ClientDisconnected.
DOCUMENTED_ERRORS = frozenset(BUILTIN_EXCEPTIONS) | {RemoteError, ClientDisconnected} | {
    value for value in vars(POSException).values()
    if isinstance(value, type) and issubclass(value, Exception)}

CLASS_NAMES = sorted(zodb_error_table()) + [
    'builtins.SystemExit', 'os.system', 'ZODB.POSException._recon', 'ZEO.Exceptions.X', '', '.']

OIDS = st.sampled_from([b'\0' * 8, b'\0' * 7 + b'\1', b'\xff' * 8])

plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(max_size=12), st.binary(max_size=12)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=10)

error_payloads = st.one_of(
    plain,
    st.fixed_dictionaries({}, optional={
        'message': plain, 'oid': st.one_of(OIDS, plain), 'serials': st.one_of(
            st.tuples(OIDS, OIDS), plain), 'class_name': plain,
        'p1': plain, 'p2': plain, 'p3': plain, 'reason': plain,
        '_reason': plain, '_oid': plain,
        '_errs': st.lists(st.one_of(st.tuples(OIDS, st.tuples(
            st.just('ZODB.POSException.UndoError'), plain)), plain), max_size=3)}))

zodb_errors = st.one_of(
    st.builds(lambda oid, a, b: POSException.ConflictError(oid=oid, serials=(a, b)),
              OIDS, OIDS, OIDS),
    st.builds(lambda oid, a: POSException.ReadConflictError(oid=oid, serials=(a, a)),
              OIDS, OIDS),
    st.builds(POSException.BTreesConflictError, plain, plain, plain, st.integers(0, 9)),
    st.builds(POSException.POSKeyError, OIDS),
    st.builds(POSException.UndoError, st.text(max_size=8), OIDS),
    st.builds(lambda errors: POSException.MultipleUndoErrors(
        [(oid, POSException.UndoError(reason, oid)) for reason, oid in errors]),
        st.lists(st.tuples(st.text(max_size=8), OIDS), min_size=1, max_size=3)),
    st.builds(POSException.ReadOnlyError),
    st.builds(POSException.StorageTransactionError, plain, plain),
)


def encode(encoding, message):
    try:
        if encoding == 'Z':
            return pickle.dumps(message, 3)
        return msgpack.packb(message, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):  # ints msgpack can't carry
        return None


def fragment(whole: bytes) -> bytes:
    """A complete pickle as a value inside another: no PROTO, no STOP."""
    if whole[:1] == b'\x80':
        whole = whole[2:]
    return whole[:-1]


class ReplyFuzzTests(unittest.TestCase):

    examples = 150

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='zeo-fuzz-replies-')
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.marker = marker_in(self.tmp)
        hostile = hostile_pickles(self.marker)
        recon = global_(b'ZODB.POSException', b'_recon')
        conflict = global_(b'ZODB.POSException', b'ConflictError')
        self.hostile_values = [fragment(p) for p in hostile] + list(
            gadget_values(self.marker).values()) + [
            recon + b'(' + conflict + b'}(' + text(b'args') + b')' + text(b'data')
            + binbytes(record_gadget(self.marker)) + b'utR',
            recon + b'(' + global_(b'builtins', b'dict') + b'}tR',
            conflict + b')\x81', conflict + b'}b', recon + b'}' + text(b'x') + b'Nsb',
        ]
        self.hostile_frames = hostile + [reply(1, v) for v in self.hostile_values]
        from ZEO.asyncio.marshal import encoder, reduce_exception
        self.reference = {letter: encoder(letter.encode(), server=True) for letter in 'ZM'}
        self.reduce_exception = reduce_exception
        logger = logging.getLogger('zeo.client')
        self.addCleanup(setattr, logger, 'disabled', logger.disabled)
        logger.disabled = True  # protocol errors are expected here
        # The unpickler alone must keep the gadgets out.
        self.addCleanup(setattr, ZODB.utils, 'get_pickle_metadata',
                        ZODB.utils.get_pickle_metadata)
        self.stats = collections.Counter()

    def frame(self, draw, encoding, msgids):
        msgid = draw(st.sampled_from(msgids * 5 + [0, -1, 999]))
        kind = draw(st.sampled_from(
            ['reply'] * 5 + ['error'] * 5 + ['reference'] * 5 + ['one_way', 'random', 'mutated']
            + (['hostile_value'] * 3 + ['hostile_frame'] if encoding == 'Z' else [])))
        if kind == 'reply':
            frame = encode(encoding, (msgid, 0, '.reply', draw(plain)))
        elif kind == 'error':
            name = draw(st.one_of(st.sampled_from(CLASS_NAMES), st.text(max_size=20), plain))
            frame = encode(encoding, (msgid, draw(st.sampled_from([1, 2, True])), '.reply',
                                      (name, draw(error_payloads))))
        elif kind == 'reference':
            error = draw(zodb_errors)
            flag = draw(st.sampled_from([0, 2, 2]))
            value = self.reduce_exception(error) if flag else [error]
            try:
                frame = self.reference[encoding](msgid, flag, '.reply', value)
            except Exception:  # msgpack can't carry the error whole
                frame = None
        elif kind == 'one_way':
            frame = encode(encoding, (0, True, draw(st.sampled_from(
                ['invalidateTransaction', 'info', 'receiveBlobStop', 'x', '.reply'])),
                draw(st.one_of(st.lists(plain, max_size=3).map(tuple), plain))))
        elif kind == 'random':
            frame = draw(st.binary(max_size=40))
        elif kind == 'hostile_value':
            frame = reply(msgid if type(msgid) is int else 1,
                          draw(st.sampled_from(self.hostile_values)),
                          draw(st.sampled_from([0, 2])))
        elif kind == 'hostile_frame':
            frame = draw(st.sampled_from(self.hostile_frames))
        else:
            frame = encode(encoding, (msgid, 0, '.reply', draw(plain))) or b'x'
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, len(frame)))
                how = draw(st.sampled_from(['flip', 'cut', 'add']))
                if how == 'flip' and at < len(frame):
                    frame = frame[:at] + bytes([frame[at] ^ draw(st.integers(1, 255))]) + frame[at + 1:]
                elif how == 'cut':
                    frame = frame[:at]
                else:
                    frame = frame[:at] + draw(st.binary(min_size=1, max_size=4)) + frame[at:]
        return frame if frame is not None else encode(encoding, (msgid, 0, '.reply', None))

    def check(self, client):
        self.assertFalse(os.path.exists(self.marker), 'a hostile pickle ran')
        for msgid, kind, value in client.log:
            if kind == 'error':
                self.assertIn(type(value), DOCUMENTED_ERRORS, (msgid, value))
            else:
                self.assertEqual(kind, 'result')

    def test_replies(self):
        @settings(SETTINGS, max_examples=self.examples)
        @given(st.data())
        def run(data):
            ZODB.utils.get_pickle_metadata = genuine_get_pickle_metadata()
            if os.path.exists(self.marker):  # each example on its own (shrinking)
                os.unlink(self.marker)
            encoding = data.draw(st.sampled_from('ZM'))
            client = DrivenClient(encoding.encode() + b'5')
            try:
                msgids = [client.call() for _ in range(data.draw(st.integers(1, 4)))]
                client.channel.prefetch(b'\0' * 8, b'\xff' * 8)
                for _ in range(data.draw(st.integers(1, 8))):
                    if client.channel.closed:
                        break
                    client.feed(self.frame(data.draw, encoding, msgids))
                    self.stats['frames'] += 1
                    self.check(client)
                if client.channel.closed:
                    self.stats['closed'] += 1
                    pending = set(msgids) - {msgid for msgid, _, _ in client.log}
                    self.assertEqual(pending, set())  # all failed with ClientDisconnected
                else:
                    # Still usable: a new call gets its reply.
                    msgid = client.call()
                    client.feed(encode(encoding, (msgid, 0, '.reply', 'ok')))
                    self.assertEqual(client.outcome(msgid), ('result', 'ok'))
                self.check(client)
                for _, kind, value in client.log:
                    self.stats[kind if kind == 'result' else type(value).__name__] += 1
            finally:
                client.close()

        run()
        print(f'\n  {type(self).__name__}: {dict(self.stats.most_common())}', end=' ')


class ReplyFuzzLongTests(ReplyFuzzTests):
    level = 3
    examples = 3000
