/* Optional compiled fast paths of zeo.protocol: message_from_wire (events),
 * decode_msgpack (the msgpack codec's decoding), and next_message and frame
 * (framing).
 *
 * Per message, recognising the two canonical shapes real peers send --
 * a Call (msgid, False, method, args) and a Reply (msgid, 0, ".reply",
 * result) -- and re-typing the tuple as the event class cost about as
 * much in Python as msgpack's decoding itself.  This module does exactly
 * the checks of the pure-Python fast path in events.py and builds the
 * event the way tuple.__new__(cls, msg) would.  Everything else -- odd
 * spellings, error replies, heartbeats, one-way calls and all malformed
 * input -- goes to the Python function given to configure(), so the
 * rules and the error messages live in one place.
 *
 * next_message does, per message, what the connection's next_event did
 * in Python around the decoder: read the 4-byte header, cut the payload
 * out of the reader's buffer, advance the reader, call the codec's
 * decoder.  Frames of unusual size go back to Python.
 *
 * plain_loads is the Z codec's fast path for a small pickle that names no
 * global and no persistent id: the walk of safe_unpickle (argument sizes,
 * memo indexes, nothing past the end) over a table built there, then the
 * plain C unpickler.  Anything else, and any failure, answers
 * NotImplemented: the restricted path in Python decodes it or says why.
 *
 * Besides the decoders it is given (msgpack's unpackb, the codec's), the
 * module only inspects objects a decoder already built (exact tuples,
 * ints, str and bytes) and never calls into them.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *unpack = NULL;          /* msgpack.unpackb */
static PyObject *unpack_kwnames = NULL;  /* ("raw", "use_list", "ext_hook") */
static PyObject *ext_hook = NULL;
static PyTypeObject *call_type = NULL;
static PyTypeObject *reply_type = NULL;
static PyObject *fallback = NULL;
static PyObject *reply_name = NULL;

/* A message id the fast path accepts: a positive exact int, or an exact
 * 2-tuple of exact bytes (the (oid, tid) of loadBefore). */
static int
fast_msgid(PyObject *msgid)
{
    if (PyTuple_CheckExact(msgid)) {
        return (PyTuple_GET_SIZE(msgid) == 2
                && PyBytes_CheckExact(PyTuple_GET_ITEM(msgid, 0))
                && PyBytes_CheckExact(PyTuple_GET_ITEM(msgid, 1)));
    }
    if (PyLong_CheckExact(msgid)) {
        int overflow = 0;
        long value = PyLong_AsLongAndOverflow(msgid, &overflow);
        if (overflow) {
            return overflow > 0;
        }
        return value > 0;
    }
    return 0;
}

static int
is_zero_int(PyObject *flag)
{
    int overflow = 0;
    if (!PyLong_CheckExact(flag)) {
        return 0;
    }
    return PyLong_AsLongAndOverflow(flag, &overflow) == 0 && !overflow;
}

/* The event: what tuple.__new__(type, msg) makes.  Up to CPython 3.13 a
 * tuple is its items and nothing else, so the object is allocated and
 * filled here, as tuple's own constructor does for a subclass.  Newer
 * versions keep more in a tuple (a cached hash from 3.14), so there the
 * constructor itself is called, whatever it sets up. */
static PyObject *
retype(PyTypeObject *type, PyObject *msg)
{
#if PY_VERSION_HEX < 0x030E0000
    Py_ssize_t i;
    PyObject *event = type->tp_alloc(type, 4);
    if (event == NULL) {
        return NULL;
    }
    for (i = 0; i < 4; i++) {
        PyObject *item = PyTuple_GET_ITEM(msg, i);
        Py_INCREF(item);
        PyTuple_SET_ITEM(event, i, item);
    }
    return event;
#else
    PyObject *event;
    PyObject *args = PyTuple_Pack(1, msg);
    if (args == NULL) {
        return NULL;
    }
    event = PyTuple_Type.tp_new(type, args, NULL);
    Py_DECREF(args);
    return event;
#endif
}

static PyObject *
message_from_wire(PyObject *module, PyObject *msg)
{
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "zeo.protocol._speedups: call configure() first");
        return NULL;
    }
    if (PyTuple_CheckExact(msg) && PyTuple_GET_SIZE(msg) == 4) {
        PyObject *msgid = PyTuple_GET_ITEM(msg, 0);
        PyObject *flag = PyTuple_GET_ITEM(msg, 1);
        PyObject *name = PyTuple_GET_ITEM(msg, 2);
        if (PyUnicode_CheckExact(name)) {
            int is_reply = PyUnicode_Compare(name, reply_name);
            if (is_reply == -1 && PyErr_Occurred()) {
                return NULL;
            }
            is_reply = (is_reply == 0);
            if (flag == Py_False) {
                if (!is_reply
                    && PyUnicode_GET_LENGTH(name) > 0
                    && PyTuple_CheckExact(PyTuple_GET_ITEM(msg, 3))
                    && fast_msgid(msgid)) {
                    return retype(call_type, msg);
                }
            }
            else if (is_reply && is_zero_int(flag) && fast_msgid(msgid)) {
                return retype(reply_type, msg);
            }
        }
    }
    return PyObject_CallOneArg(fallback, msg);
}

/* decode_msgpack(payload) is message_from_wire(msgpack.unpackb(payload,
 * raw=False, use_list=False, ext_hook=<the codec's hook>)) without the
 * two Python-level calls around it. */
static PyObject *
decode_msgpack(PyObject *module, PyObject *payload)
{
    PyObject *args[5];
    PyObject *msg, *event;
    if (unpack == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "zeo.protocol._speedups: call configure_msgpack() first");
        return NULL;
    }
    args[0] = NULL;  /* room for PY_VECTORCALL_ARGUMENTS_OFFSET */
    args[1] = payload;
    args[2] = Py_False;
    args[3] = Py_False;
    args[4] = ext_hook;
    msg = PyObject_Vectorcall(unpack, args + 1,
                              1 | PY_VECTORCALL_ARGUMENTS_OFFSET, unpack_kwnames);
    if (msg == NULL) {
        return NULL;
    }
    event = message_from_wire(module, msg);
    Py_DECREF(msg);
    return event;
}

static PyObject *
configure_msgpack(PyObject *module, PyObject *args)
{
    PyObject *unpackb, *hook, *names;
    if (!PyArg_ParseTuple(args, "OO:configure_msgpack", &unpackb, &hook)) {
        return NULL;
    }
    if (!PyCallable_Check(unpackb) || !PyCallable_Check(hook)) {
        PyErr_SetString(PyExc_TypeError,
                        "configure_msgpack(unpackb, ext_hook) takes two callables");
        return NULL;
    }
    names = Py_BuildValue("(sss)", "raw", "use_list", "ext_hook");
    if (names == NULL) {
        return NULL;
    }
    Py_INCREF(unpackb);
    Py_INCREF(hook);
    Py_XSETREF(unpack, unpackb);
    Py_XSETREF(ext_hook, hook);
    Py_XSETREF(unpack_kwnames, names);
    Py_RETURN_NONE;
}

static PyObject *
configure(PyObject *module, PyObject *args)
{
    PyObject *call, *reply, *checked;
    if (!PyArg_ParseTuple(args, "O!O!O:configure",
                          &PyType_Type, &call, &PyType_Type, &reply,
                          &checked)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)call, &PyTuple_Type)
        || !PyType_IsSubtype((PyTypeObject *)reply, &PyTuple_Type)
        || ((PyTypeObject *)call)->tp_basicsize != PyTuple_Type.tp_basicsize
        || ((PyTypeObject *)reply)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError,
                        "configure() needs tuple subclasses without"
                        " instance attributes (__slots__ = ())");
        return NULL;
    }
    if (!PyCallable_Check(checked)) {
        PyErr_SetString(PyExc_TypeError, "configure(): fallback must be callable");
        return NULL;
    }
    Py_INCREF(call);
    Py_INCREF(reply);
    Py_INCREF(checked);
    Py_XSETREF(call_type, (PyTypeObject *)call);
    Py_XSETREF(reply_type, (PyTypeObject *)reply);
    Py_XSETREF(fallback, checked);
    Py_RETURN_NONE;
}

static PyObject *str_chunk = NULL;
static PyObject *str_pos = NULL;

/* next_message(reader, unusual_size, decode): see framing.next_message,
 * of which this is a copy in C.  Returns decode(payload) for the next
 * frame, None when more bytes are needed, NotImplemented for a frame of
 * unusual_size bytes or more (the caller's Python handles those). */
static PyObject *
next_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *reader, *decode, *chunk, *pos_obj, *payload, *end_obj, *event;
    Py_ssize_t unusual, pos, length, size, end;
    const unsigned char *data;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "next_message(reader, unusual_size, decode)");
        return NULL;
    }
    reader = args[0];
    decode = args[2];
    unusual = PyLong_AsSsize_t(args[1]);
    if (unusual == -1 && PyErr_Occurred()) {
        return NULL;
    }
    chunk = PyObject_GetAttr(reader, str_chunk);
    if (chunk == NULL) {
        return NULL;
    }
    pos_obj = PyObject_GetAttr(reader, str_pos);
    if (pos_obj == NULL) {
        Py_DECREF(chunk);
        return NULL;
    }
    pos = PyLong_AsSsize_t(pos_obj);
    Py_DECREF(pos_obj);
    if (pos == -1 && PyErr_Occurred()) {
        Py_DECREF(chunk);
        return NULL;
    }
    if (PyBytes_CheckExact(chunk)) {
        data = (const unsigned char *)PyBytes_AS_STRING(chunk);
        length = PyBytes_GET_SIZE(chunk);
    }
    else if (PyByteArray_CheckExact(chunk)) {
        data = (const unsigned char *)PyByteArray_AS_STRING(chunk);
        length = PyByteArray_GET_SIZE(chunk);
    }
    else {
        Py_DECREF(chunk);
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (pos < 0) {
        Py_DECREF(chunk);
        PyErr_SetString(PyExc_ValueError, "next_message: reader.pos is negative");
        return NULL;
    }
    if (length - pos < 4) {
        Py_DECREF(chunk);
        Py_RETURN_NONE;
    }
    size = ((Py_ssize_t)data[pos] << 24) | ((Py_ssize_t)data[pos + 1] << 16)
           | ((Py_ssize_t)data[pos + 2] << 8) | (Py_ssize_t)data[pos + 3];
    if (size >= unusual) {
        Py_DECREF(chunk);
        Py_RETURN_NOTIMPLEMENTED;
    }
    end = pos + 4 + size;
    if (end > length) {
        Py_DECREF(chunk);
        Py_RETURN_NONE;
    }
    payload = PyBytes_FromStringAndSize((const char *)data + pos + 4, size);
    Py_DECREF(chunk);
    if (payload == NULL) {
        return NULL;
    }
    end_obj = PyLong_FromSsize_t(end);
    if (end_obj == NULL || PyObject_SetAttr(reader, str_pos, end_obj) < 0) {
        Py_XDECREF(end_obj);
        Py_DECREF(payload);
        return NULL;
    }
    Py_DECREF(end_obj);
    event = PyObject_CallOneArg(decode, payload);
    Py_DECREF(payload);
    return event;
}

/* frame(payload) -> header + payload, in one allocation instead of
 * struct.pack's and the concatenation's two. */
static PyObject *
frame(PyObject *module, PyObject *payload)
{
    Py_ssize_t size;
    PyObject *framed;
    unsigned char *out;
    if (!PyBytes_CheckExact(payload)) {
        PyErr_Format(PyExc_TypeError, "frame() takes bytes, not %.100s",
                     Py_TYPE(payload)->tp_name);
        return NULL;
    }
    size = PyBytes_GET_SIZE(payload);
    if ((unsigned long long)size > 0xFFFFFFFFULL) {
        PyErr_Format(PyExc_OverflowError,
                     "a %zd-byte payload can't be framed", size);
        return NULL;
    }
    framed = PyBytes_FromStringAndSize(NULL, size + 4);
    if (framed == NULL) {
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(framed);
    out[0] = (unsigned char)((size >> 24) & 0xFF);
    out[1] = (unsigned char)((size >> 16) & 0xFF);
    out[2] = (unsigned char)((size >> 8) & 0xFF);
    out[3] = (unsigned char)(size & 0xFF);
    memcpy(out + 4, PyBytes_AS_STRING(payload), (size_t)size);
    return framed;
}

/* The table configure_plain_loads() gets: per opcode, the size of its
 * fixed argument (0-8), one of these, or PLAIN_NO. */
#define PLAIN_LEN1 0xF0          /* 1-byte length, then that many bytes */
#define PLAIN_LEN4 0xF1          /* 4-byte unsigned length */
#define PLAIN_LEN4_SIGNED 0xF2   /* 4-byte signed length */
#define PLAIN_LEN8 0xF3          /* 8-byte length */
#define PLAIN_STOP 0xF4
#define PLAIN_LONG_BINPUT 0xF5   /* 4-byte memo index, at most the size */
#define PLAIN_NO 0xFF            /* not for this path */

static unsigned char plain_table[256];
static PyObject *plain_unpickle = NULL;   /* pickle.loads */

static unsigned long long
little_endian(const unsigned char *p, int size)
{
    unsigned long long value = 0;
    int i;
    for (i = size - 1; i >= 0; i--) {
        value = (value << 8) | p[i];
    }
    return value;
}

/* Does the pickle in p[0:end] take only plain opcodes, and end with its
 * STOP exactly at end? */
static int
plain_pickle(const unsigned char *p, Py_ssize_t end)
{
    Py_ssize_t pos = 0;
    unsigned long long length;
    while (pos < end) {
        unsigned char kind = plain_table[p[pos]];
        pos++;
        if (kind <= 8) {
            pos += kind;
            continue;
        }
        switch (kind) {
        case PLAIN_STOP:
            return pos == end;
        case PLAIN_LEN1:
            if (pos >= end) {
                return 0;
            }
            pos += 1 + p[pos];
            continue;
        case PLAIN_LEN4:
        case PLAIN_LEN4_SIGNED:
        case PLAIN_LONG_BINPUT:
            if (end - pos < 4) {
                return 0;
            }
            length = little_endian(p + pos, 4);
            pos += 4;
            if (kind == PLAIN_LONG_BINPUT) {
                if (length > (unsigned long long)end) {
                    return 0;
                }
                continue;
            }
            if (kind == PLAIN_LEN4_SIGNED && length > 0x7FFFFFFFULL) {
                return 0;
            }
            break;
        case PLAIN_LEN8:
            if (end - pos < 8) {
                return 0;
            }
            length = little_endian(p + pos, 8);
            pos += 8;
            break;
        default:
            return 0;
        }
        if (length > (unsigned long long)(end - pos)) {
            return 0;
        }
        pos += (Py_ssize_t)length;
    }
    return 0;
}

/* plain_loads(data) -> the object, or NotImplemented. */
static PyObject *
plain_loads(PyObject *module, PyObject *data)
{
    Py_buffer view;
    int plain;
    PyObject *result;
    if (plain_unpickle == NULL) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    plain = plain_pickle((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    if (!plain) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    result = PyObject_CallOneArg(plain_unpickle, data);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();   /* the restricted path says why */
        Py_RETURN_NOTIMPLEMENTED;
    }
    return result;
}

static PyObject *
configure_plain_loads(PyObject *module, PyObject *args)
{
    Py_buffer table;
    PyObject *unpickle;
    if (!PyArg_ParseTuple(args, "y*O:configure_plain_loads", &table, &unpickle)) {
        return NULL;
    }
    if (table.len != 256 || !PyCallable_Check(unpickle)) {
        PyBuffer_Release(&table);
        PyErr_SetString(PyExc_TypeError,
                        "configure_plain_loads(table, loads) takes 256 bytes and a callable");
        return NULL;
    }
    memcpy(plain_table, table.buf, 256);
    PyBuffer_Release(&table);
    Py_INCREF(unpickle);
    Py_XSETREF(plain_unpickle, unpickle);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"next_message", (PyCFunction)(void (*)(void))next_message, METH_FASTCALL,
     "next_message(reader, unusual_size, decode): see zeo.protocol.framing."},
    {"decode_msgpack", decode_msgpack, METH_O,
     "decode_msgpack(payload) -> event: msgpack.unpackb with the codec's\n"
     "options, then message_from_wire."},
    {"configure_msgpack", configure_msgpack, METH_VARARGS,
     "configure_msgpack(unpackb, ext_hook): what decode_msgpack calls."},
    {"frame", frame, METH_O,
     "frame(payload: bytes) -> the 4-byte big-endian length, then payload."},
    {"message_from_wire", message_from_wire, METH_O,
     "message_from_wire(msg) -> event; see zeo.protocol.events."},
    {"plain_loads", plain_loads, METH_O,
     "plain_loads(data) -> the unpickled object, or NotImplemented: see\n"
     "zeo.protocol.safe_unpickle."},
    {"configure_plain_loads", configure_plain_loads, METH_VARARGS,
     "configure_plain_loads(table, loads): the opcode table and pickle.loads."},
    {"configure", configure, METH_VARARGS,
     "configure(Call, Reply, fallback): the event classes to build and the\n"
     "function handling every other input."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "zeo.protocol._speedups",
    "Compiled fast paths of zeo.protocol (message_from_wire, decode_msgpack, next_message,\n"
    "frame, plain_loads).",
    -1, methods
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module;
    reply_name = PyUnicode_InternFromString(".reply");
    str_chunk = PyUnicode_InternFromString("chunk");
    str_pos = PyUnicode_InternFromString("pos");
    if (reply_name == NULL || str_chunk == NULL || str_pos == NULL) {
        return NULL;
    }
    module = PyModule_Create(&module_def);
    return module;
}
