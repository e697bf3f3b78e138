/* Optional compiled fast paths of zeo.protocol: message_from_wire (events)
 * and frame (framing).
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
 * The module only inspects objects a decoder already built (exact
 * tuples, ints, str and bytes) and never calls back into them.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* The event: a tuple of *type* holding the items of the 4-tuple *msg*. */
static PyObject *
retype(PyTypeObject *type, PyObject *msg)
{
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

static PyMethodDef methods[] = {
    {"frame", frame, METH_O,
     "frame(payload: bytes) -> the 4-byte big-endian length, then payload."},
    {"message_from_wire", message_from_wire, METH_O,
     "message_from_wire(msg) -> event; see zeo.protocol.events."},
    {"configure", configure, METH_VARARGS,
     "configure(Call, Reply, fallback): the event classes to build and the\n"
     "function handling every other input."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "zeo.protocol._speedups",
    "Compiled fast paths of zeo.protocol (message_from_wire, frame).",
    -1, methods
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module;
    reply_name = PyUnicode_InternFromString(".reply");
    if (reply_name == NULL) {
        return NULL;
    }
    module = PyModule_Create(&module_def);
    return module;
}
