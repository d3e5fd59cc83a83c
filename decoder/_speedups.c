/* decoder._speedups: the compiled hot path of decoder/ (optional; see decoder/accel.py).
 *
 * Why: the sidecar's catch-up speed is bound by the Python it runs per change (splitting a
 * TupleData into column slices, building the message objects) and per row written (the
 * COPY BINARY stream, the binary arrays of a run's keys). This module does exactly what the
 * pure-Python code does (decoder/protocol.py, decoder/tuples.py, decoder/copyfmt.py) for
 * well-formed input, and for anything else returns None so that the caller runs the pure
 * path, which raises the one DecodeError the tests pin: one behaviour, two speeds, the same
 * tests run against both (tests/decoder/conftest.py).
 *
 * The objects built are ordinary instances of the frozen slots dataclasses (TupleData,
 * Insert, Update, Delete): allocated by the type and filled through the slots' member
 * offsets, which is what object.__new__ plus the member descriptors' __set__ do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#define MAX_FIELDS 5
#define XLOGDATA_HEADER 25  /* b'w' + wal_start, wal_end, send_time */

typedef struct {
    PyTypeObject *type;
    Py_ssize_t offsets[MAX_FIELDS];
    int nfields;
} Shape;

static Shape tuple_shape, insert_shape, update_shape, delete_shape;
static int ready = 0;

/* A few recent kinds strings ("bbbbb", "bnnnn"...): a table's rows mostly share one, and
 * reusing the str saves its allocation and makes TupleData.values' comparison an identity. */
#define KINDS_CACHE 8
static PyObject *kinds_cache[KINDS_CACHE];
static int kinds_next = 0;

static int
shape_init(Shape *shape, PyObject *type, PyObject *names)
{
    if (!PyType_Check(type) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) > MAX_FIELDS) {
        PyErr_SetString(PyExc_TypeError, "setup: a type and a tuple of field names");
        return -1;
    }
    shape->nfields = (int)PyTuple_GET_SIZE(names);
    for (int i = 0; i < shape->nfields; i++) {
        PyObject *d = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        if (d == NULL)
            return -1;
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type)
                || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(d);
            PyErr_SetString(PyExc_TypeError, "setup: fields must be __slots__ members");
            return -1;
        }
        shape->offsets[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
    }
    Py_XSETREF(shape->type, (PyTypeObject *)Py_NewRef(type));
    return 0;
}

/* A new instance of shape's type with the fields set; steals every value (NULL = error:
 * the values are released). */
static PyObject *
make(Shape *shape, PyObject **values)
{
    PyObject *o = shape->type->tp_alloc(shape->type, 0);
    if (o == NULL) {
        for (int i = 0; i < shape->nfields; i++)
            Py_XDECREF(values[i]);
        return NULL;
    }
    for (int i = 0; i < shape->nfields; i++)
        *(PyObject **)((char *)o + shape->offsets[i]) = values[i];
    return o;
}

static PyObject *
setup(PyObject *self, PyObject *args)
{
    PyObject *t[4], *n[4];
    if (!PyArg_ParseTuple(args, "OOOOOOOO", &t[0], &n[0], &t[1], &n[1], &t[2], &n[2],
                          &t[3], &n[3]))
        return NULL;
    if (shape_init(&tuple_shape, t[0], n[0]) < 0 || shape_init(&insert_shape, t[1], n[1]) < 0
            || shape_init(&update_shape, t[2], n[2]) < 0
            || shape_init(&delete_shape, t[3], n[3]) < 0)
        return NULL;
    if (tuple_shape.nfields != 2 || insert_shape.nfields != 3 || update_shape.nfields != 5
            || delete_shape.nfields != 4) {
        PyErr_SetString(PyExc_TypeError, "setup: unexpected field counts");
        return NULL;
    }
    ready = 1;
    Py_RETURN_NONE;
}

static PyObject *
kinds_str(const char *kinds, Py_ssize_t n)
{
    for (int i = 0; i < KINDS_CACHE; i++) {
        PyObject *k = kinds_cache[i];
        if (k != NULL && PyUnicode_GET_LENGTH(k) == n
                && memcmp(PyUnicode_1BYTE_DATA(k), kinds, (size_t)n) == 0)
            return Py_NewRef(k);
    }
    PyObject *k = PyUnicode_New(n, 127);
    if (k == NULL)
        return NULL;
    memcpy(PyUnicode_1BYTE_DATA(k), kinds, (size_t)n);
    Py_XSETREF(kinds_cache[kinds_next], Py_NewRef(k));
    kinds_next = (kinds_next + 1) % KINDS_CACHE;
    return k;
}

static inline uint32_t
u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* The TupleData at buf[*pos]: a new reference, *pos moved past it. NULL without an error set
 * when the bytes are not a well-formed TupleData (the caller goes the pure path); NULL with
 * an error set on a memory error. */
static PyObject *
tuple_at(const unsigned char *buf, Py_ssize_t n, Py_ssize_t *pos)
{
    Py_ssize_t p = *pos;
    if (p + 2 > n)
        return NULL;
    Py_ssize_t ncols = (Py_ssize_t)buf[p] << 8 | buf[p + 1];
    p += 2;
    char small[256];
    char *kinds = ncols <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)ncols);
    if (kinds == NULL)
        return PyErr_NoMemory();
    PyObject *raw = PyTuple_New(ncols), *result = NULL;
    if (raw == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (p >= n)
            goto malformed;
        unsigned char kind = buf[p];
        if (kind == 't' || kind == 'b') {
            if (p + 5 > n)
                goto malformed;
            int32_t length = (int32_t)u32(buf + p + 1);
            Py_ssize_t start = p + 5;
            if (length < 0 || start + length > n)
                goto malformed;
            PyObject *v = PyBytes_FromStringAndSize((const char *)buf + start, length);
            if (v == NULL)
                goto error;
            PyTuple_SET_ITEM(raw, i, v);
            p = start + length;
        } else if (kind == 'n' || kind == 'u') {
            PyTuple_SET_ITEM(raw, i, Py_NewRef(Py_None));
            p += 1;
        } else {
            goto malformed;
        }
        kinds[i] = (char)kind;
    }
    PyObject *values[2];
    values[0] = kinds_str(kinds, ncols);
    if (values[0] == NULL)
        goto error;
    values[1] = raw;
    raw = NULL;
    result = make(&tuple_shape, values);
    *pos = p;
    goto done;
malformed:
error:
    Py_XDECREF(raw);
done:
    if (kinds != small)
        PyMem_Free(kinds);
    return result;
}

/* read_tuple(buf: bytes, pos: int) -> (TupleData, int) | None */
static PyObject *
read_tuple(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_tuple(buf: bytes, pos: int)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (!ready || pos < 0)
        Py_RETURN_NONE;
    PyObject *tup = tuple_at((const unsigned char *)PyBytes_AS_STRING(args[0]),
                             PyBytes_GET_SIZE(args[0]), &pos);
    if (tup == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *end = PyLong_FromSsize_t(pos);
    if (end == NULL) {
        Py_DECREF(tup);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(tup);
        Py_DECREF(end);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, tup);
    PyTuple_SET_ITEM(out, 1, end);
    return out;
}

/* The Insert/Update/Delete message in buf[0:n]; xid is the open streamed block's (None
 * outside one: the message then carries no xid). A new reference; None (a new reference too)
 * for anything not well formed; NULL with an error set on a memory error. */
static PyObject *
change_in(const unsigned char *buf, Py_ssize_t n, PyObject *xid_arg)
{
    if (!ready)
        Py_RETURN_NONE;
    int streamed = xid_arg != Py_None;
    Py_ssize_t pos = streamed ? 9 : 5;
    if (n < pos + 1)
        Py_RETURN_NONE;
    unsigned char tag = buf[0];
    PyObject *tuples[2] = {NULL, NULL};  /* old-or-key, new */
    unsigned char marker = buf[pos];
    if (tag == 'I') {
        if (marker != 'N')
            Py_RETURN_NONE;
    } else if (tag == 'U' || tag == 'D') {
        if (marker == 'K' || marker == 'O') {
            pos += 1;
            tuples[0] = tuple_at(buf, n, &pos);
            if (tuples[0] == NULL)
                goto fail;
            if (tag == 'U' && (pos >= n || buf[pos] != 'N'))
                goto fail;
        } else if (tag == 'D' || marker != 'N') {
            Py_RETURN_NONE;
        }
    } else {
        Py_RETURN_NONE;
    }
    if (tag != 'D') {
        pos += 1;
        tuples[1] = tuple_at(buf, n, &pos);
        if (tuples[1] == NULL)
            goto fail;
    }
    if (pos != n)
        goto fail;
    PyObject *xid, *relid;
    if (streamed) {
        xid = PyLong_FromUnsignedLong(u32(buf + 1));
        relid = PyLong_FromUnsignedLong(u32(buf + 5));
    } else {
        xid = Py_NewRef(Py_None);
        relid = PyLong_FromUnsignedLong(u32(buf + 1));
    }
    if (xid == NULL || relid == NULL) {
        Py_XDECREF(xid);
        Py_XDECREF(relid);
        goto fail;
    }
    PyObject *none = Py_None, *v[5] = {xid, relid, NULL, NULL, NULL};
    if (tag == 'I') {
        v[2] = tuples[1];
        return make(&insert_shape, v);
    }
    /* old_tuple ('O'), key_tuple ('K') */
    if (tuples[0] == NULL) {
        v[2] = Py_NewRef(none);
        v[3] = Py_NewRef(none);
    } else if (marker == 'O') {
        v[2] = tuples[0];
        v[3] = Py_NewRef(none);
    } else {
        v[2] = Py_NewRef(none);
        v[3] = tuples[0];
    }
    if (tag == 'U') {
        v[4] = tuples[1];
        return make(&update_shape, v);
    }
    return make(&delete_shape, v);
fail:
    Py_XDECREF(tuples[0]);
    Py_XDECREF(tuples[1]);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* change(buf: bytes, xid: int | None) -> Insert | Update | Delete | None
 * One whole Insert/Update/Delete message. None for anything not well formed. */
static PyObject *
change(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "change(buf: bytes, xid: int | None)");
        return NULL;
    }
    return change_in((const unsigned char *)PyBytes_AS_STRING(args[0]),
                     PyBytes_GET_SIZE(args[0]), args[1]);
}

/* frame_change(data: buffer, xid: int | None) -> Insert | Update | Delete | None
 * The change inside one whole CopyData payload of the replication stream (an XLogData 'w'
 * frame; decoder/framing.py has the layout), read straight from the buffer libpq filled:
 * no bytes object of the frame and none of its payload (the read path's two copies). None
 * for a keepalive, any other message and anything not well formed: the caller then takes
 * the pure path (split_frame, Decoder.decode), which decodes it or raises. */
static PyObject *
frame_change(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame_change(data, xid: int | None)");
        return NULL;
    }
    if (PyBytes_CheckExact(args[0])) {
        Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        if (n <= XLOGDATA_HEADER || p[0] != 'w')
            Py_RETURN_NONE;
        return change_in(p + XLOGDATA_HEADER, n - XLOGDATA_HEADER, args[1]);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r;
    const unsigned char *p = (const unsigned char *)view.buf;
    if (view.len <= XLOGDATA_HEADER || p[0] != 'w')
        r = Py_NewRef(Py_None);
    else
        r = change_in(p + XLOGDATA_HEADER, view.len - XLOGDATA_HEADER, args[1]);
    PyBuffer_Release(&view);
    return r;
}

/* -- COPY BINARY and binary arrays ---------------------------------------------------- */

static inline void
put32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static const char COPY_HEADER[] = "PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
#define COPY_HEADER_LEN 19

/* Bytes the fields of one image take (4 + len per value, 4 per NULL); -1 = TypeError set. */
static Py_ssize_t
fields_size(PyObject *image)
{
    if (!PyTuple_Check(image)) {
        PyErr_Format(PyExc_TypeError, "a row image must be a tuple, not %.100s",
                     Py_TYPE(image)->tp_name);
        return -1;
    }
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(image); i++) {
        PyObject *v = PyTuple_GET_ITEM(image, i);
        if (v == Py_None)
            size += 4;
        else if (PyBytes_Check(v))
            size += 4 + PyBytes_GET_SIZE(v);
        else {
            PyErr_Format(PyExc_TypeError, "a value must be bytes or None, not %.100s",
                         Py_TYPE(v)->tp_name);
            return -1;
        }
    }
    return size;
}

static char *
put_fields(char *p, PyObject *image)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(image); i++) {
        PyObject *v = PyTuple_GET_ITEM(image, i);
        if (v == Py_None) {
            put32(p, 0xffffffffu);
            p += 4;
        } else {
            Py_ssize_t len = PyBytes_GET_SIZE(v);
            put32(p, (uint32_t)len);
            memcpy(p + 4, PyBytes_AS_STRING(v), (size_t)len);
            p += 4 + len;
        }
    }
    return p;
}

static int
int32_of(PyObject *o, int32_t *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit an int4");
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

/* copy_rows(rows: Sequence, extra: bool) -> bytes: decoder.copyfmt.copy_rows, compiled. */
static PyObject *
copy_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "copy_rows(rows, extra)");
        return NULL;
    }
    int extra = PyObject_IsTrue(args[1]);
    if (extra < 0)
        return NULL;
    PyObject *rows = PySequence_Fast(args[0], "rows must be a sequence");
    if (rows == NULL)
        return NULL;
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(rows), size = COPY_HEADER_LEN + 2;
    PyObject **items = PySequence_Fast_ITEMS(rows), *out = NULL;
    int32_t *ops = NULL;
    Py_ssize_t ncols0 = -1;
    if (extra && nrows) {
        ops = PyMem_Malloc(sizeof(int32_t) * 2 * (size_t)nrows);
        if (ops == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *image = items[r];
        if (extra) {
            if (!PyTuple_Check(image) || PyTuple_GET_SIZE(image) != 3) {
                PyErr_SetString(PyExc_TypeError, "rows must be (op, n, image) tuples");
                goto done;
            }
            if (int32_of(PyTuple_GET_ITEM(image, 0), &ops[2 * r]) < 0
                    || int32_of(PyTuple_GET_ITEM(image, 1), &ops[2 * r + 1]) < 0)
                goto done;
            image = PyTuple_GET_ITEM(image, 2);
            size += 16;
        }
        Py_ssize_t s = fields_size(image);
        if (s < 0)
            goto done;
        Py_ssize_t ncols = PyTuple_GET_SIZE(image) + (extra ? 2 : 0);
        if (ncols > 32767) {
            PyErr_SetString(PyExc_OverflowError, "more than 32767 columns");
            goto done;
        }
        if (ncols0 < 0)
            ncols0 = ncols;
        size += 2 + s;
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        goto done;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, COPY_HEADER, COPY_HEADER_LEN);
    p += COPY_HEADER_LEN;
    for (Py_ssize_t r = 0; r < nrows; r++) {
        PyObject *image = items[r];
        /* like the pure code: extra rows count their own columns, plain rows the first's */
        Py_ssize_t ncols;
        if (extra) {
            image = PyTuple_GET_ITEM(image, 2);
            ncols = PyTuple_GET_SIZE(image) + 2;
        } else {
            ncols = ncols0;
        }
        p[0] = (char)(ncols >> 8);
        p[1] = (char)ncols;
        p += 2;
        if (extra) {
            put32(p, 4);
            put32(p + 4, (uint32_t)ops[2 * r]);
            put32(p + 8, 4);
            put32(p + 12, (uint32_t)ops[2 * r + 1]);
            p += 16;
        }
        p = put_fields(p, image);
    }
    p[0] = p[1] = (char)0xff;
done:
    PyMem_Free(ops);
    Py_DECREF(rows);
    return out;
}

/* binary_array(elem_oid: int, values: Sequence[bytes | None]) -> bytes */
static PyObject *
binary_array(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "binary_array(elem_oid, values)");
        return NULL;
    }
    unsigned long oid = PyLong_AsUnsignedLong(args[0]);
    if (oid == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (oid > 0xffffffffUL) {
        PyErr_SetString(PyExc_OverflowError, "elem_oid does not fit an oid");
        return NULL;
    }
    PyObject *values = PySequence_Fast(args[1], "values must be a sequence");
    if (values == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(values), size = 20;
    PyObject **items = PySequence_Fast_ITEMS(values), *out = NULL;
    int has_null = 0;
    if (count > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many values");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (items[i] == Py_None) {
            has_null = 1;
            size += 4;
        } else if (PyBytes_Check(items[i])) {
            size += 4 + PyBytes_GET_SIZE(items[i]);
        } else {
            PyErr_Format(PyExc_TypeError, "a value must be bytes or None, not %.100s",
                         Py_TYPE(items[i])->tp_name);
            goto done;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        goto done;
    char *p = PyBytes_AS_STRING(out);
    put32(p, 1);
    put32(p + 4, (uint32_t)has_null);
    put32(p + 8, (uint32_t)oid);
    put32(p + 12, (uint32_t)count);
    put32(p + 16, 1);
    p += 20;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *v = items[i];
        if (v == Py_None) {
            put32(p, 0xffffffffu);
            p += 4;
        } else {
            Py_ssize_t len = PyBytes_GET_SIZE(v);
            put32(p, (uint32_t)len);
            memcpy(p + 4, PyBytes_AS_STRING(v), (size_t)len);
            p += 4 + len;
        }
    }
done:
    Py_DECREF(values);
    return out;
}

/* column_arrays(images, positions, elem_oids) -> list[bytes]: for each position, the
 * binary_array of that column across the row images - without transposing them first. */
static PyObject *
column_arrays(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "column_arrays(images, positions, elem_oids)");
        return NULL;
    }
    PyObject *images = PySequence_Fast(args[0], "images must be a sequence");
    if (images == NULL)
        return NULL;
    PyObject *positions = NULL, *oids = NULL, *out = NULL, *result = NULL;
    positions = PySequence_Fast(args[1], "positions must be a sequence");
    oids = positions ? PySequence_Fast(args[2], "elem_oids must be a sequence") : NULL;
    if (oids == NULL)
        goto done;
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(images);
    Py_ssize_t npos = PySequence_Fast_GET_SIZE(positions);
    if (PySequence_Fast_GET_SIZE(oids) != npos) {
        PyErr_SetString(PyExc_ValueError, "one element oid per position");
        goto done;
    }
    if (nrows > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "too many values");
        goto done;
    }
    PyObject **rows = PySequence_Fast_ITEMS(images);
    Py_ssize_t ncols = -1;
    for (Py_ssize_t r = 0; r < nrows; r++) {  /* like zip(*images, strict=True) */
        if (!PyTuple_Check(rows[r])) {
            PyErr_SetString(PyExc_TypeError, "a row image must be a tuple");
            goto done;
        }
        if (ncols < 0)
            ncols = PyTuple_GET_SIZE(rows[r]);
        else if (PyTuple_GET_SIZE(rows[r]) != ncols) {
            PyErr_SetString(PyExc_ValueError, "row images of different lengths");
            goto done;
        }
    }
    out = PyList_New(npos);
    if (out == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < npos; k++) {
        Py_ssize_t col = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(positions, k));
        if (col == -1 && PyErr_Occurred())
            goto done;
        if (nrows && (col < 0 || col >= ncols)) {
            PyErr_SetString(PyExc_IndexError, "position out of range");
            goto done;
        }
        unsigned long oid = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(oids, k));
        if (oid == (unsigned long)-1 && PyErr_Occurred())
            goto done;
        if (oid > 0xffffffffUL) {
            PyErr_SetString(PyExc_OverflowError, "elem_oid does not fit an oid");
            goto done;
        }
        Py_ssize_t size = 20;
        int has_null = 0;
        for (Py_ssize_t r = 0; r < nrows; r++) {
            PyObject *v = PyTuple_GET_ITEM(rows[r], col);
            if (v == Py_None) {
                has_null = 1;
                size += 4;
            } else if (PyBytes_Check(v)) {
                size += 4 + PyBytes_GET_SIZE(v);
            } else {
                PyErr_Format(PyExc_TypeError, "a value must be bytes or None, not %.100s",
                             Py_TYPE(v)->tp_name);
                goto done;
            }
        }
        PyObject *arr = PyBytes_FromStringAndSize(NULL, size);
        if (arr == NULL)
            goto done;
        char *p = PyBytes_AS_STRING(arr);
        put32(p, 1);
        put32(p + 4, (uint32_t)has_null);
        put32(p + 8, (uint32_t)oid);
        put32(p + 12, (uint32_t)nrows);
        put32(p + 16, 1);
        p += 20;
        for (Py_ssize_t r = 0; r < nrows; r++) {
            PyObject *v = PyTuple_GET_ITEM(rows[r], col);
            if (v == Py_None) {
                put32(p, 0xffffffffu);
                p += 4;
            } else {
                Py_ssize_t len = PyBytes_GET_SIZE(v);
                put32(p, (uint32_t)len);
                memcpy(p + 4, PyBytes_AS_STRING(v), (size_t)len);
                p += 4 + len;
            }
        }
        PyList_SET_ITEM(out, k, arr);
    }
    result = out;
    out = NULL;
done:
    Py_XDECREF(out);
    Py_XDECREF(oids);
    Py_XDECREF(positions);
    Py_DECREF(images);
    return result;
}

/* -- netting: replica/stream/batch.py's TableBatch.insert/update/delete, compiled -------
 *
 * net(batch, msg) absorbs one Insert/Update/Delete into a TableBatch exactly as the pure
 * methods do (batch.py's net-effect table: the entries dict of key -> (state, raw, None),
 * the multiset counts, the ops counters) and returns True; it returns None, having changed
 * nothing, for what it leaves to the pure code: a text value (which raises there), an
 * Update with unchanged-TOAST columns (the fill / overlay / key-move rules), a key-less
 * table's Update without the old row (which raises), and any object not of the registered
 * shapes. The batch's slots are read through their member offsets (setup_batch). */

static PyTypeObject *batch_type = NULL;
static Py_ssize_t batch_off[4];  /* entries, counts, ops, key_pos */
static PyObject *st_fresh = NULL, *st_update = NULL, *st_delete = NULL;
static long fresh_code, update_code, delete_code;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* setup_batch(TableBatch, (entries, counts, ops, key_pos), FRESH, UPDATE, DELETE) */
static PyObject *
setup_batch(PyObject *self, PyObject *args)
{
    PyObject *type, *names, *f, *u, *d;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!", &type, &PyTuple_Type, &names, &PyLong_Type, &f,
                          &PyLong_Type, &u, &PyLong_Type, &d))
        return NULL;
    if (PyTuple_GET_SIZE(names) != 4) {
        PyErr_SetString(PyExc_TypeError, "setup_batch: four slot names");
        return NULL;
    }
    Shape shape = {NULL, {0}, 0};
    if (shape_init(&shape, type, names) < 0)
        return NULL;
    long fc = PyLong_AsLong(f), uc = PyLong_AsLong(u), dc = PyLong_AsLong(d);
    if ((fc == -1 || uc == -1 || dc == -1) && PyErr_Occurred()) {
        Py_DECREF(shape.type);
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        batch_off[i] = shape.offsets[i];
    Py_XSETREF(batch_type, shape.type);
    Py_XSETREF(st_fresh, Py_NewRef(f));
    Py_XSETREF(st_update, Py_NewRef(u));
    Py_XSETREF(st_delete, Py_NewRef(d));
    fresh_code = fc;
    update_code = uc;
    delete_code = dc;
    Py_RETURN_NONE;
}

/* A TupleData's kinds and raw (borrowed); 0 when obj is not one of well-formed parts. */
static int
tuple_parts(PyObject *tup, PyObject **kinds, PyObject **raw)
{
    if (tup == NULL || !Py_IS_TYPE(tup, tuple_shape.type))
        return 0;
    *kinds = SLOT(tup, tuple_shape.offsets[0]);
    *raw = SLOT(tup, tuple_shape.offsets[1]);
    return *kinds != NULL && *raw != NULL && PyUnicode_CheckExact(*kinds)
        && PyUnicode_KIND(*kinds) == PyUnicode_1BYTE_KIND && PyTuple_CheckExact(*raw);
}

static int
has_kind(PyObject *kinds, char kind)
{
    return memchr(PyUnicode_1BYTE_DATA(kinds), kind, (size_t)PyUnicode_GET_LENGTH(kinds))
        != NULL;
}

/* itemgetter(*key_pos)(raw): the value itself for one key column, else a tuple; NULL
 * without an error when a position is out of range (the pure code raises). */
static PyObject *
key_of(PyObject *raw, PyObject *key_pos)
{
    Py_ssize_t nk = PyTuple_GET_SIZE(key_pos), ncols = PyTuple_GET_SIZE(raw);
    PyObject *key = nk == 1 ? NULL : PyTuple_New(nk);
    if (nk != 1 && key == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *p = PyTuple_GET_ITEM(key_pos, i);
        Py_ssize_t at = PyLong_Check(p) ? PyLong_AsSsize_t(p) : -1;
        if (at < 0 || at >= ncols) {
            PyErr_Clear();
            Py_XDECREF(key);
            return NULL;
        }
        PyObject *v = PyTuple_GET_ITEM(raw, at);
        if (nk == 1)
            return Py_NewRef(v);
        PyTuple_SET_ITEM(key, i, Py_NewRef(v));
    }
    return key;
}

/* The state of an entry (a (state, raw, kinds) tuple); -1 with an error set if not one. */
static long
state_of(PyObject *entry)
{
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 1) {
        PyErr_SetString(PyExc_TypeError, "a batch entry must be a (state, raw, kinds) tuple");
        return -1;
    }
    return PyLong_AsLong(PyTuple_GET_ITEM(entry, 0));
}

static int
put_entry(PyObject *entries, PyObject *key, PyObject *state, PyObject *raw)
{
    PyObject *e = PyTuple_Pack(3, state, raw, Py_None);
    if (e == NULL)
        return -1;
    int r = PyDict_SetItem(entries, key, e);
    Py_DECREF(e);
    return r;
}

/* counts[raw] += n, the entry gone at 0 (TableBatch._count). */
static int
add_count(PyObject *counts, PyObject *raw, long n)
{
    PyObject *c = PyDict_GetItemWithError(counts, raw);
    if (c == NULL && PyErr_Occurred())
        return -1;
    long v = 0;
    if (c != NULL) {
        v = PyLong_AsLong(c);
        if (v == -1 && PyErr_Occurred())
            return -1;
    }
    v += n;
    if (v == 0)
        return c == NULL ? 0 : PyDict_DelItem(counts, raw);
    PyObject *o = PyLong_FromLong(v);
    if (o == NULL)
        return -1;
    int r = PyDict_SetItem(counts, raw, o);
    Py_DECREF(o);
    return r;
}

/* ops[i] += 1 */
static int
bump(PyObject *ops, Py_ssize_t i)
{
    long v = PyLong_AsLong(PyList_GET_ITEM(ops, i));
    if (v == -1 && PyErr_Occurred())
        return -1;
    PyObject *n = PyLong_FromLong(v + 1);
    if (n == NULL)
        return -1;
    PyList_SetItem(ops, i, n);  /* steals n, releases the old count */
    return 0;
}

/* A key just absorbed as new: FRESH if it was absent or FRESH before (an insert, or an
 * update of a key the run inserted), else UPDATE. */
static PyObject *
fresh_or_update(PyObject *entries, PyObject *key, int absent_means_fresh, int *err)
{
    PyObject *prev = PyDict_GetItemWithError(entries, key);
    if (prev == NULL) {
        if (PyErr_Occurred())
            *err = 1;
        return absent_means_fresh ? st_fresh : st_update;
    }
    long s = state_of(prev);
    if (s == -1 && PyErr_Occurred())
        *err = 1;
    return s == fresh_code ? st_fresh : st_update;
}

/* The key's entry becomes a DELETE of the row present at run start, or disappears when the
 * run inserted it (TableBatch.delete). */
static int
delete_key(PyObject *entries, PyObject *key, PyObject *old_raw)
{
    PyObject *prev = PyDict_GetItemWithError(entries, key);
    if (prev == NULL && PyErr_Occurred())
        return -1;
    if (prev != NULL) {
        long s = state_of(prev);
        if (s == -1 && PyErr_Occurred())
            return -1;
        if (s == fresh_code)
            return PyDict_DelItem(entries, key);
    }
    return put_entry(entries, key, st_delete, old_raw);
}

static PyObject *
net(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "net(batch, msg)");
        return NULL;
    }
    PyObject *batch = args[0], *msg = args[1];
    if (!ready || batch_type == NULL || !Py_IS_TYPE(batch, batch_type))
        Py_RETURN_NONE;
    PyObject *entries = SLOT(batch, batch_off[0]), *counts = SLOT(batch, batch_off[1]);
    PyObject *ops = SLOT(batch, batch_off[2]), *key_pos = SLOT(batch, batch_off[3]);
    if (entries == NULL || !PyDict_CheckExact(entries) || counts == NULL
            || !PyDict_CheckExact(counts) || ops == NULL || !PyList_CheckExact(ops)
            || PyList_GET_SIZE(ops) != 4 || key_pos == NULL || !PyTuple_CheckExact(key_pos))
        Py_RETURN_NONE;
    int keyed = PyTuple_GET_SIZE(key_pos) > 0, err = 0;
    PyTypeObject *t = Py_TYPE(msg);
    PyObject *kinds, *raw, *old_kinds, *old_raw, *key = NULL, *old_key = NULL;
    if (t == insert_shape.type) {
        if (!tuple_parts(SLOT(msg, insert_shape.offsets[2]), &kinds, &raw)
                || has_kind(kinds, 't'))
            Py_RETURN_NONE;
        if (!keyed) {
            if (bump(ops, 0) < 0 || add_count(counts, raw, 1) < 0)
                return NULL;
            Py_RETURN_TRUE;
        }
        if ((key = key_of(raw, key_pos)) == NULL)
            goto not_mine;
        if (bump(ops, 0) < 0)
            goto error;
        PyObject *state = fresh_or_update(entries, key, 1, &err);
        if (err || put_entry(entries, key, state, raw) < 0)
            goto error;
        goto done;
    }
    if (t == delete_shape.type) {
        PyObject *old = SLOT(msg, delete_shape.offsets[2]);
        if (old == Py_None)
            old = SLOT(msg, delete_shape.offsets[3]);
        if (!tuple_parts(old, &old_kinds, &old_raw))
            Py_RETURN_NONE;
        if (!keyed) {
            if (bump(ops, 2) < 0 || add_count(counts, old_raw, -1) < 0)
                return NULL;
            Py_RETURN_TRUE;
        }
        if ((key = key_of(old_raw, key_pos)) == NULL)
            goto not_mine;
        if (bump(ops, 2) < 0 || delete_key(entries, key, old_raw) < 0)
            goto error;
        goto done;
    }
    if (t != update_shape.type)
        Py_RETURN_NONE;
    /* Update: only the plain ones (no 't', no 'u' in the new row) */
    PyObject *full = SLOT(msg, update_shape.offsets[2]), *old = full;
    if (old == Py_None)
        old = SLOT(msg, update_shape.offsets[3]);
    if (!tuple_parts(SLOT(msg, update_shape.offsets[4]), &kinds, &raw)
            || has_kind(kinds, 't') || has_kind(kinds, 'u'))
        Py_RETURN_NONE;
    old_raw = NULL;
    if (old != Py_None && !tuple_parts(old, &old_kinds, &old_raw))
        Py_RETURN_NONE;
    if (!keyed) {
        if (full == Py_None)
            Py_RETURN_NONE;  /* the pure code says why it cannot be applied */
        if (bump(ops, 1) < 0 || add_count(counts, old_raw, -1) < 0
                || add_count(counts, raw, 1) < 0)
            return NULL;
        Py_RETURN_TRUE;
    }
    if ((key = key_of(raw, key_pos)) == NULL)
        goto not_mine;
    old_key = old_raw == NULL ? Py_NewRef(key) : key_of(old_raw, key_pos);
    if (old_key == NULL)
        goto not_mine;
    int same = PyObject_RichCompareBool(old_key, key, Py_EQ);
    if (same < 0 || bump(ops, 1) < 0)
        goto error;
    if (same) {
        PyObject *state = fresh_or_update(entries, key, 0, &err);
        if (err || put_entry(entries, key, state, raw) < 0)
            goto error;
        goto done;
    }
    /* a key change: the old key leaves the run (or the table), the new one arrives */
    if (delete_key(entries, old_key, old_raw) < 0)
        goto error;
    PyObject *prev = PyDict_GetItemWithError(entries, key);
    if (prev == NULL && PyErr_Occurred())
        goto error;
    if (put_entry(entries, key, prev == NULL ? st_fresh : st_update, raw) < 0)
        goto error;
done:
    Py_XDECREF(key);
    Py_XDECREF(old_key);
    Py_RETURN_TRUE;
not_mine:
    Py_XDECREF(key);
    Py_XDECREF(old_key);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
error:
    Py_XDECREF(key);
    Py_XDECREF(old_key);
    return NULL;
}

/* split(entries) -> (fresh, deletes, updates) | None: a keyed run's row images by state in
 * one pass (TableBatch.split), None when a PATCH is among them (the pure code sorts those). */
static PyObject *
split(PyObject *self, PyObject *entries)
{
    if (!PyDict_Check(entries)) {
        PyErr_SetString(PyExc_TypeError, "split(entries: dict)");
        return NULL;
    }
    if (batch_type == NULL)
        Py_RETURN_NONE;
    PyObject *lists[3] = {PyList_New(0), PyList_New(0), PyList_New(0)}, *out = NULL;
    if (lists[0] == NULL || lists[1] == NULL || lists[2] == NULL)
        goto done;
    Py_ssize_t pos = 0;
    PyObject *key, *entry;
    while (PyDict_Next(entries, &pos, &key, &entry)) {
        long s = state_of(entry);
        if (s == -1 && PyErr_Occurred())
            goto done;
        if (PyTuple_GET_SIZE(entry) != 3) {
            PyErr_SetString(PyExc_TypeError, "a batch entry must be a (state, raw, kinds) tuple");
            goto done;
        }
        PyObject *list = s == fresh_code ? lists[0] : s == delete_code ? lists[1]
            : s == update_code ? lists[2] : NULL;
        if (list == NULL) {
            out = Py_NewRef(Py_None);
            goto done;
        }
        if (PyList_Append(list, PyTuple_GET_ITEM(entry, 1)) < 0)
            goto done;
    }
    out = PyTuple_Pack(3, lists[0], lists[1], lists[2]);
done:
    for (int i = 0; i < 3; i++)
        Py_XDECREF(lists[i]);
    return out;
}

/* -- History: the recorder's per-version step (replica/history/recorder.py) ------------
 *
 * Why: with --history every applied change is also a version, and the Python of
 * ``Recorder.change`` (find the table, pick the image, test a key change, name the
 * unchanged-TOAST columns, build the row tuple) was the sidecar's main extra cost per
 * change. A HistoryStep holds the hot state of one recorder (the relation-id -> _Table map,
 * the transaction's packed commit time and LSN, the sequence number, the buffered count, the
 * writer and its hand-over flag; replica/history/compiled.py maps the recorder's attributes
 * onto its members) and ``change(tw, msg)`` appends exactly the tuples the pure method does.
 * Anything it does not handle itself - the first change of a table or a re-shaped one, an
 * object not of the registered types, a malformed image, a sequence past int4 - goes to the
 * pure method (the reference, ``fallback``) before anything is changed: one behaviour, two
 * speeds, the same tests on both (tests/replica/test_history_encode.py). */

static Shape table_shape;  /* _Table: tw, images, keyed, key_pos, columns */
static int history_ready = 0;
static PyObject *op_i, *op_u, *op_d, *str_relation_id, *str_spill;
#define SEQ_CACHE 4096
static PyObject *seq_cache[SEQ_CACHE];  /* _pgml_seq values packed once (recorder._SEQS) */

/* setup_history(_Table, ("tw", "images", "keyed", "key_pos", "columns")) */
static PyObject *
setup_history(PyObject *self, PyObject *args)
{
    PyObject *type, *names;
    if (!PyArg_ParseTuple(args, "OO!", &type, &PyTuple_Type, &names))
        return NULL;
    if (PyTuple_GET_SIZE(names) != 5) {
        PyErr_SetString(PyExc_TypeError, "setup_history: five slot names");
        return NULL;
    }
    if (shape_init(&table_shape, type, names) < 0)
        return NULL;
    if (op_i == NULL) {
        op_i = PyBytes_FromStringAndSize("I", 1);
        op_u = PyBytes_FromStringAndSize("U", 1);
        op_d = PyBytes_FromStringAndSize("D", 1);
        str_relation_id = PyUnicode_InternFromString("relation_id");
        str_spill = PyUnicode_InternFromString("spill");
        if (op_i == NULL || op_u == NULL || op_d == NULL || str_relation_id == NULL
                || str_spill == NULL)
            return NULL;
    }
    history_ready = 1;
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    PyObject *recorder;  /* the Recorder: ``spill`` is called on it */
    PyObject *fallback;  /* the pure Recorder.change: fallback(recorder, tw, msg) */
    PyObject *by_rel, *time, *lsn, *free, *writer;  /* the recorder's attributes of the name */
    Py_ssize_t seq, buffered, spill_at;
    PyObject *u_kinds, *u_columns, *u_value;  /* the last unchanged-TOAST text[] built */
} HistoryStep;

static int
step_traverse(HistoryStep *s, visitproc visit, void *arg)
{
    Py_VISIT(s->recorder);
    Py_VISIT(s->fallback);
    Py_VISIT(s->by_rel);
    Py_VISIT(s->time);
    Py_VISIT(s->lsn);
    Py_VISIT(s->free);
    Py_VISIT(s->writer);
    Py_VISIT(s->u_kinds);
    Py_VISIT(s->u_columns);
    Py_VISIT(s->u_value);
    return 0;
}

static int
step_clear(HistoryStep *s)
{
    Py_CLEAR(s->recorder);
    Py_CLEAR(s->fallback);
    Py_CLEAR(s->by_rel);
    Py_CLEAR(s->time);
    Py_CLEAR(s->lsn);
    Py_CLEAR(s->free);
    Py_CLEAR(s->writer);
    Py_CLEAR(s->u_kinds);
    Py_CLEAR(s->u_columns);
    Py_CLEAR(s->u_value);
    return 0;
}

static void
step_dealloc(HistoryStep *s)
{
    PyObject_GC_UnTrack(s);
    step_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* HistoryStep(recorder, fallback) */
static PyObject *
step_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *recorder, *fallback;
    if (!PyArg_ParseTuple(args, "OO:HistoryStep", &recorder, &fallback))
        return NULL;
    if (!history_ready) {
        PyErr_SetString(PyExc_RuntimeError, "HistoryStep: setup_history was not called");
        return NULL;
    }
    HistoryStep *s = (HistoryStep *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->recorder = Py_NewRef(recorder);
    s->fallback = Py_NewRef(fallback);
    s->spill_at = PY_SSIZE_T_MAX;
    return (PyObject *)s;
}

/* The packed _pgml_seq: a new reference; NULL without an error past int4 (the pure code). */
static PyObject *
seq_bytes(Py_ssize_t seq)
{
    if (seq < 0 || seq > INT32_MAX)
        return NULL;
    if (seq < SEQ_CACHE && seq_cache[seq] != NULL)
        return Py_NewRef(seq_cache[seq]);
    char b[4];
    put32(b, (uint32_t)seq);
    PyObject *v = PyBytes_FromStringAndSize(b, 4);
    if (v != NULL && seq < SEQ_CACHE)
        seq_cache[seq] = Py_NewRef(v);
    return v;
}

/* raw + (time, lsn, seq, op, unchanged): a new reference (NULL: error set). */
static PyObject *
version(HistoryStep *s, PyObject *raw, PyObject *seq, PyObject *op, PyObject *unchanged)
{
    Py_ssize_t n = PyTuple_GET_SIZE(raw);
    PyObject *v = PyTuple_New(n + 5);
    if (v == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(v, i, Py_NewRef(PyTuple_GET_ITEM(raw, i)));
    PyTuple_SET_ITEM(v, n, Py_NewRef(s->time));
    PyTuple_SET_ITEM(v, n + 1, Py_NewRef(s->lsn));
    PyTuple_SET_ITEM(v, n + 2, Py_NewRef(seq));
    PyTuple_SET_ITEM(v, n + 3, Py_NewRef(op));
    PyTuple_SET_ITEM(v, n + 4, Py_NewRef(unchanged));
    return v;
}

/* The text[] of the columns sent as 'u' (recorder._text_array): a new reference; NULL
 * without an error when a 'u' has no column or a name does not encode (the pure code). */
static PyObject *
unchanged_names(HistoryStep *s, PyObject *kinds, PyObject *columns)
{
    if (s->u_kinds == kinds && s->u_columns == columns)
        return Py_NewRef(s->u_value);
    const char *k = (const char *)PyUnicode_1BYTE_DATA(kinds);
    Py_ssize_t nk = PyUnicode_GET_LENGTH(kinds), ncols = PyTuple_GET_SIZE(columns);
    Py_ssize_t size = 20, count = 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (k[i] != 'u')
            continue;
        if (i >= ncols || !PyUnicode_Check(PyTuple_GET_ITEM(columns, i)))
            return NULL;
        Py_ssize_t len;
        if (PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(columns, i), &len) == NULL) {
            PyErr_Clear();
            return NULL;
        }
        size += 4 + len;
        count++;
    }
    if (count > INT32_MAX || size > INT32_MAX)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    put32(p, 1);  /* ndim */
    put32(p + 4, 0);  /* no NULLs */
    put32(p + 8, 25);  /* text */
    put32(p + 12, (uint32_t)count);
    put32(p + 16, 1);  /* lower bound */
    p += 20;
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (k[i] != 'u')
            continue;
        Py_ssize_t len;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(columns, i), &len);
        put32(p, (uint32_t)len);
        memcpy(p + 4, name, (size_t)len);
        p += 4 + len;
    }
    Py_XSETREF(s->u_kinds, Py_NewRef(kinds));
    Py_XSETREF(s->u_columns, Py_NewRef(columns));
    Py_XSETREF(s->u_value, Py_NewRef(out));
    return out;
}

/* Whether the old image's key differs from the new one's (1/0); -1: leave it to the pure
 * code (a position out of range or not an int, a comparison that raised). */
static int
key_moved(PyObject *old_raw, PyObject *raw, PyObject *key_pos)
{
    Py_ssize_t no = PyTuple_GET_SIZE(old_raw), nr = PyTuple_GET_SIZE(raw);
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(key_pos); j++) {
        PyObject *p = PyTuple_GET_ITEM(key_pos, j);
        Py_ssize_t i = PyLong_CheckExact(p) ? PyLong_AsSsize_t(p) : -1;
        if (i < 0 || i >= no || i >= nr) {
            PyErr_Clear();
            return -1;
        }
        int ne = PyObject_RichCompareBool(PyTuple_GET_ITEM(old_raw, i),
                                          PyTuple_GET_ITEM(raw, i), Py_NE);
        if (ne < 0) {
            PyErr_Clear();
            return -1;
        }
        if (ne)
            return 1;
    }
    return 0;
}

static PyObject *
step_slow(HistoryStep *s, PyObject *tw, PyObject *msg)
{
    PyObject *a[3] = {s->recorder, tw, msg};
    return PyObject_Vectorcall(s->fallback, a, 3, NULL);
}

/* change(tw, msg) -> None: Recorder.change. */
static PyObject *
step_change(HistoryStep *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "change(tw, msg)");
        return NULL;
    }
    PyObject *tw = args[0], *msg = args[1];
    if (!ready || s->by_rel == NULL || !PyDict_CheckExact(s->by_rel) || s->time == NULL
            || s->lsn == NULL || s->free == NULL || s->writer == NULL)
        return step_slow(s, tw, msg);
    PyObject *rid = PyObject_GetAttr(tw, str_relation_id);
    if (rid == NULL) {
        PyErr_Clear();
        return step_slow(s, tw, msg);
    }
    PyObject *t = PyDict_GetItemWithError(s->by_rel, rid);  /* borrowed */
    Py_DECREF(rid);
    if (t == NULL) {
        PyErr_Clear();
        return step_slow(s, tw, msg);  /* the table's first change: _table() */
    }
    if (!Py_IS_TYPE(t, table_shape.type) || SLOT(t, table_shape.offsets[0]) != tw)
        return step_slow(s, tw, msg);
    PyObject *images = SLOT(t, table_shape.offsets[1]);
    if (images == Py_None)
        Py_RETURN_NONE;  /* no history for this table */
    if (images == NULL || !PyList_CheckExact(images))
        return step_slow(s, tw, msg);
    PyObject *op, *raw, *kinds = NULL, *old_raw = NULL, *unchanged = Py_None, *u = NULL;
    PyTypeObject *kind = Py_TYPE(msg);
    if (kind == insert_shape.type || kind == update_shape.type) {
        PyObject *new_tuple = SLOT(msg, kind == insert_shape.type ? insert_shape.offsets[2]
                                                                  : update_shape.offsets[4]);
        if (!tuple_parts(new_tuple, &kinds, &raw))
            return step_slow(s, tw, msg);
        op = op_i;
        if (kind == update_shape.type) {
            op = op_u;
            PyObject *old = SLOT(msg, update_shape.offsets[3]);  /* key_tuple or old_tuple */
            if (old == NULL || old == Py_None)
                old = SLOT(msg, update_shape.offsets[2]);
            if (old == NULL)
                return step_slow(s, tw, msg);
            if (old != Py_None) {
                PyObject *keyed = SLOT(t, table_shape.offsets[2]);
                PyObject *key_pos = SLOT(t, table_shape.offsets[3]), *okinds, *o;
                if (keyed != Py_True && keyed != Py_False)
                    return step_slow(s, tw, msg);
                if (keyed == Py_True) {
                    if (!tuple_parts(old, &okinds, &o) || key_pos == NULL
                            || !PyTuple_CheckExact(key_pos))
                        return step_slow(s, tw, msg);
                    int moved = key_moved(o, raw, key_pos);
                    if (moved < 0)
                        return step_slow(s, tw, msg);
                    if (moved)
                        old_raw = o;
                }
            }
        }
        if (has_kind(kinds, 'u')) {
            PyObject *columns = SLOT(t, table_shape.offsets[4]);
            if (columns == NULL || !PyTuple_CheckExact(columns))
                return step_slow(s, tw, msg);
            unchanged = u = unchanged_names(s, kinds, columns);
            if (u == NULL) {
                if (PyErr_Occurred())
                    return NULL;
                return step_slow(s, tw, msg);
            }
        }
    } else if (kind == delete_shape.type) {
        PyObject *old = SLOT(msg, delete_shape.offsets[2]);  /* old_tuple or key_tuple */
        if (old == NULL || old == Py_None)
            old = SLOT(msg, delete_shape.offsets[3]);
        if (!tuple_parts(old, &kinds, &raw))
            return step_slow(s, tw, msg);
        op = op_d;
    } else {
        return step_slow(s, tw, msg);
    }
    /* everything checked: build, then append */
    Py_ssize_t seq = s->seq;
    PyObject *v_old = NULL, *v_new = NULL, *sq = NULL, *sq_old = NULL;
    if (old_raw != NULL) {
        sq_old = seq_bytes(seq);
        seq += 1;
    }
    sq = seq_bytes(seq);
    if (sq == NULL || (old_raw != NULL && sq_old == NULL)) {
        Py_XDECREF(sq);
        Py_XDECREF(sq_old);
        Py_XDECREF(u);
        if (PyErr_Occurred())
            return NULL;
        return step_slow(s, tw, msg);  /* past int4: the pure code raises */
    }
    if (old_raw != NULL)
        v_old = version(s, old_raw, sq_old, op_d, Py_None);
    v_new = version(s, raw, sq, op, unchanged);
    Py_XDECREF(sq);
    Py_XDECREF(sq_old);
    Py_XDECREF(u);
    if (v_new == NULL || (old_raw != NULL && v_old == NULL)
            || (v_old != NULL && PyList_Append(images, v_old) < 0)
            || PyList_Append(images, v_new) < 0) {
        Py_XDECREF(v_old);
        Py_XDECREF(v_new);
        return NULL;
    }
    Py_XDECREF(v_old);
    Py_DECREF(v_new);
    s->seq = seq + 1;
    s->buffered += 1;
    if (s->buffered >= s->spill_at && s->writer != Py_None) {
        PyObject *f = PySequence_GetItem(s->free, 0);
        if (f == NULL)
            return NULL;
        int free = PyObject_IsTrue(f);
        Py_DECREF(f);
        if (free < 0)
            return NULL;
        if (free)
            return PyObject_CallMethodNoArgs(s->recorder, str_spill);
    }
    Py_RETURN_NONE;
}

static PyMemberDef step_members[] = {
    {"by_rel", T_OBJECT_EX, offsetof(HistoryStep, by_rel), 0, "relation id -> _Table"},
    {"time", T_OBJECT_EX, offsetof(HistoryStep, time), 0, "the commit time, packed"},
    {"lsn", T_OBJECT_EX, offsetof(HistoryStep, lsn), 0, "the commit LSN, packed"},
    {"free", T_OBJECT_EX, offsetof(HistoryStep, free), 0, "[whether the writer is free]"},
    {"writer", T_OBJECT_EX, offsetof(HistoryStep, writer), 0, "the TargetWriter or None"},
    {"seq", T_PYSSIZET, offsetof(HistoryStep, seq), 0, "the next _pgml_seq"},
    {"buffered", T_PYSSIZET, offsetof(HistoryStep, buffered), 0, "changes buffered"},
    {"spill_at", T_PYSSIZET, offsetof(HistoryStep, spill_at), 0, "recorder.SPILL"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef step_methods[] = {
    {"change", (PyCFunction)(void (*)(void))step_change, METH_FASTCALL,
     "change(tw, msg) -> None: Recorder.change, compiled"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HistoryStepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "decoder._speedups.HistoryStep",
    .tp_basicsize = sizeof(HistoryStep),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "HistoryStep(recorder, fallback): a history recorder's per-version step",
    .tp_new = step_new,
    .tp_dealloc = (destructor)step_dealloc,
    .tp_traverse = (traverseproc)step_traverse,
    .tp_clear = (inquiry)step_clear,
    .tp_members = step_members,
    .tp_methods = step_methods,
};

/* ---- the copy relay (replica/clone/relay.py): CopyData messages gathered in one call ------
 *
 * Why: a COPY ... TO STDOUT sends one CopyData message per row, and the relay's pure loop
 * makes one Python call (pgconn.get_copy_data) per row: ~0.4 us a row, CPU that the source's
 * and the target's backends want on the same cores. copy_gather takes every message libpq
 * already has in its buffer (PQgetCopyData with async=1 never reads the socket) and returns
 * them as one bytes object, so the Python loop runs once per buffer-full, not once per row.
 * Waiting, consuming input, the locks and the writes stay in Python (relay.gather is the
 * pure reference this does exactly what of).
 *
 * libpq is not linked: the functions must be the ones of the libpq psycopg loaded (its
 * bundled copy in psycopg_binary, a ctypes-loaded one, or the system's), so the caller
 * hands their addresses to setup_relay (decoder/accel.py relay_gather).
 *
 * The GIL is released while reading: PQgetCopyData(async=1) only parses libpq's input buffer
 * (no socket I/O) into memory we own until it is copied; no Python object is touched there
 * except ``out``, which nobody else sees yet. A NoticeResponse met among the messages makes
 * libpq call psycopg's notice receiver, which takes the GIL itself (Cython ``with gil``, a
 * ctypes callback). The relay is the connection's only user while its COPY runs. */
#include <stdint.h>

typedef int (*relay_getcopydata_fn)(void *conn, char **buffer, int async);
typedef void (*relay_freemem_fn)(void *ptr);
static relay_getcopydata_fn relay_getcopydata = NULL;
static relay_freemem_fn relay_freemem = NULL;

/* the bytes object a call starts with, grown (GIL held) only for more than this */
#define RELAY_FIRST_ALLOC (64 * 1024)

static PyObject *
setup_relay(PyObject *self, PyObject *args)
{
    unsigned long long get, release;
    if (!PyArg_ParseTuple(args, "KK:setup_relay", &get, &release))
        return NULL;
    if (get == 0 || release == 0) {
        PyErr_SetString(PyExc_ValueError, "setup_relay: PQgetCopyData and PQfreemem addresses");
        return NULL;
    }
    relay_getcopydata = (relay_getcopydata_fn)(uintptr_t)get;
    relay_freemem = (relay_freemem_fn)(uintptr_t)release;
    Py_RETURN_NONE;
}

/* copy_gather(pgconn_ptr, limit) -> (data, messages, rc): the CopyData messages libpq has
 * buffered, concatenated, until ``limit`` bytes are gathered (a message is never split: the
 * last one may go past it) or PQgetCopyData returns rc <= 0 (0: would block, -1: the COPY
 * ended, -2: failed). rc > 0: stopped at the limit, more may be buffered. */
static PyObject *
copy_gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "copy_gather(pgconn_ptr, limit)");
        return NULL;
    }
    if (relay_getcopydata == NULL || relay_freemem == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "copy_gather: setup_relay was not called");
        return NULL;
    }
    void *conn = PyLong_AsVoidPtr(args[0]);
    if (conn == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "copy_gather: no connection (closed?)");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 1)
        limit = 1;
    Py_ssize_t cap = limit < RELAY_FIRST_ALLOC ? limit : RELAY_FIRST_ALLOC;
    PyObject *out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL)
        return NULL;
    Py_ssize_t size = 0, count = 0;
    int rc;
    for (;;) {
        char *dst = PyBytes_AS_STRING(out);  /* nobody else sees ``out`` yet */
        char *msg = NULL;
        Py_BEGIN_ALLOW_THREADS
        for (;;) {
            msg = NULL;
            rc = relay_getcopydata(conn, &msg, 1);
            if (rc <= 0 || (Py_ssize_t)rc > cap - size)
                break;  /* nothing (more) now, or a message that needs more room */
            memcpy(dst + size, msg, (size_t)rc);
            relay_freemem(msg);
            msg = NULL;
            size += rc;
            count++;
            if (size >= limit)
                break;
        }
        Py_END_ALLOW_THREADS
        if (rc <= 0 || msg == NULL)
            break;  /* rc <= 0 leaves no message behind (libpq frees nothing to us) */
        /* a message past the room: grow (doubling up to the limit, at least to fit it) */
        Py_ssize_t want = cap * 2 < limit ? cap * 2 : limit;
        if (want < size + rc)
            want = size + rc;
        if (_PyBytes_Resize(&out, want) < 0) {
            relay_freemem(msg);  /* out is freed and NULL */
            return NULL;
        }
        cap = want;
        memcpy(PyBytes_AS_STRING(out) + size, msg, (size_t)rc);
        relay_freemem(msg);
        size += rc;
        count++;
        if (size >= limit)
            break;
    }
    if (size != cap && _PyBytes_Resize(&out, size) < 0)
        return NULL;
    return Py_BuildValue("(Nni)", out, count, rc);
}
/* ---- end of the copy relay ---------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"column_arrays", (PyCFunction)(void (*)(void))column_arrays, METH_FASTCALL,
     "column_arrays(images, positions, elem_oids) -> list of binary arrays, one per position"},
    {"setup", setup, METH_VARARGS,
     "setup(TupleData, names, Insert, names, Update, names, Delete, names)"},
    {"read_tuple", (PyCFunction)(void (*)(void))read_tuple, METH_FASTCALL,
     "read_tuple(buf, pos) -> (TupleData, pos) | None (None: not well formed)"},
    {"change", (PyCFunction)(void (*)(void))change, METH_FASTCALL,
     "change(buf, xid) -> Insert | Update | Delete | None (None: use the pure path)"},
    {"frame_change", (PyCFunction)(void (*)(void))frame_change, METH_FASTCALL,
     "frame_change(copydata, xid) -> the change inside an XLogData frame | None"},
    {"setup_batch", setup_batch, METH_VARARGS,
     "setup_batch(TableBatch, (entries, counts, ops, key_pos), FRESH, UPDATE, DELETE)"},
    {"split", split, METH_O,
     "split(entries) -> (fresh, deletes, updates) row images | None (a PATCH among them)"},
    {"net", (PyCFunction)(void (*)(void))net, METH_FASTCALL,
     "net(batch, msg) -> True (absorbed) | None (changed nothing: use the pure method)"},
    {"copy_rows", (PyCFunction)(void (*)(void))copy_rows, METH_FASTCALL,
     "copy_rows(rows, extra) -> bytes: a complete COPY BINARY stream"},
    {"binary_array", (PyCFunction)(void (*)(void))binary_array, METH_FASTCALL,
     "binary_array(elem_oid, values) -> bytes: a 1-D array in binary wire format"},
    {"setup_history", setup_history, METH_VARARGS,
     "setup_history(_Table, (tw, images, keyed, key_pos, columns)): for HistoryStep"},
    {"setup_relay", setup_relay, METH_VARARGS,
     "setup_relay(PQgetCopyData address, PQfreemem address): the libpq copy_gather calls"},
    {"copy_gather", (PyCFunction)(void (*)(void))copy_gather, METH_FASTCALL,
     "copy_gather(pgconn_ptr, limit) -> (bytes, messages, rc): the CopyData libpq buffered"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "decoder._speedups",
    "The compiled hot path of decoder/ (optional; decoder/accel.py chooses).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&HistoryStepType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddObjectRef(m, "HistoryStep", (PyObject *)&HistoryStepType) < 0)
        Py_CLEAR(m);
    return m;
}
