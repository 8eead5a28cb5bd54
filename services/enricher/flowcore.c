/* The enricher's compiled flow core: Enricher._flows's loop over raw flow records, in C.
 *
 * flowscope.enricher.enriching is the definition of a flow record; this file is a faster
 * rendering of the same function for the common record, and must produce the same
 * output byte for byte (tests/unit/enricher/test_flowcore.py compares the two paths on
 * generated join states and records). Any record it does not handle itself goes through
 * Enricher._flow, the Python path, in order.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Set once by configure(): the Python path's pieces this core calls or reads. */
static PyObject *render_line;   /* enriching.render_line */
static PyObject *record_error;  /* flowscope.core.errors.RecordError */

static PyObject *s_flow, *s_tally, *s_lines, *s_bad, *s_records_in, *s_records_out,
    *s_dedup_dropped;

static int
add_to(PyObject *obj, PyObject *name, Py_ssize_t n)
{
    /* obj.name += n */
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    PyObject *delta = PyLong_FromSsize_t(n);
    if (delta == NULL) {
        Py_DECREF(value);
        return -1;
    }
    PyObject *sum = PyNumber_Add(value, delta);
    Py_DECREF(value);
    Py_DECREF(delta);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int
bucket_append(PyObject *lines, PyObject *subject, PyObject *line)
{
    PyObject *bucket = PyDict_GetItemWithError(lines, subject);
    if (bucket != NULL)
        return PyList_Append(bucket, line);
    if (PyErr_Occurred())
        return -1;
    bucket = PyList_New(1);
    if (bucket == NULL)
        return -1;
    Py_INCREF(line);
    PyList_SET_ITEM(bucket, 0, line);
    int rc = PyDict_SetItem(lines, subject, bucket);
    Py_DECREF(bucket);
    return rc;
}

/* One record through the Python path: Enricher._flow(raw, i, now, tally, render_line).
 * Returns 1 when a line was added, 0 when the record was a dropped duplicate, 2 when it
 * was bad (appended to out.bad), -1 on error. */
static int
python_path(PyObject *flow, PyObject *raw, Py_ssize_t i, PyObject *now, PyObject *tally,
            PyObject *lines, PyObject *bad)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL)
        return -1;
    PyObject *args[5] = {raw, index, now, tally, render_line};
    PyObject *result = PyObject_Vectorcall(flow, args, 5, NULL);
    Py_DECREF(index);
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(record_error))
            return -1;
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *pair = PyTuple_Pack(2, raw, value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (pair == NULL)
            return -1;
        int rc = PyList_Append(bad, pair);
        Py_DECREF(pair);
        return rc < 0 ? -1 : 2;
    }
    if (result == Py_None) {
        Py_DECREF(result);
        return 0;
    }
    int rc = -1;
    if (PyTuple_CheckExact(result) && PyTuple_GET_SIZE(result) == 2)
        rc = bucket_append(lines, PyTuple_GET_ITEM(result, 0), PyTuple_GET_ITEM(result, 1));
    else
        PyErr_SetString(PyExc_TypeError, "_flow must return (subject, line) or None");
    Py_DECREF(result);
    return rc < 0 ? -1 : 1;
}

static PyObject *
flow_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "flow_lines(enricher, records, now, out)");
        return NULL;
    }
    if (render_line == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_flowcore.configure() was not called");
        return NULL;
    }
    PyObject *enricher = args[0], *records = args[1], *now = args[2], *out = args[3];
    PyObject *flow = NULL, *tally = NULL, *lines = NULL, *bad = NULL, *seq = NULL;
    PyObject *result = NULL;
    Py_ssize_t n_in = 0, n_out = 0, n_dropped = 0;

    if ((flow = PyObject_GetAttr(enricher, s_flow)) == NULL ||
        (tally = PyObject_GetAttr(out, s_tally)) == NULL ||
        (lines = PyObject_GetAttr(out, s_lines)) == NULL ||
        (bad = PyObject_GetAttr(out, s_bad)) == NULL ||
        (seq = PySequence_Fast(records, "records must be iterable")) == NULL)
        goto done;
    if (!PyDict_CheckExact(lines) || !PyList_CheckExact(bad)) {
        PyErr_SetString(PyExc_TypeError, "out.lines must be a dict and out.bad a list");
        goto done;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        n_in++;
        int rc = python_path(flow, items[i], i, now, tally, lines, bad);
        if (rc < 0)
            goto done;
        if (rc == 1)
            n_out++;
        else if (rc == 0)
            n_dropped++;
    }
    if (add_to(tally, s_records_in, n_in) < 0 || add_to(tally, s_records_out, n_out) < 0 ||
        add_to(tally, s_dedup_dropped, n_dropped) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(flow);
    Py_XDECREF(tally);
    Py_XDECREF(lines);
    Py_XDECREF(bad);
    Py_XDECREF(seq);
    return result;
}

static PyObject *
configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"render_line", "record_error", NULL};
    PyObject *render, *error;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OO:configure", names, &render, &error))
        return NULL;
    Py_XSETREF(render_line, Py_NewRef(render));
    Py_XSETREF(record_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"flow_lines", (PyCFunction)(void (*)(void))flow_lines, METH_FASTCALL,
     "flow_lines(enricher, records, now, out): Enricher._flows's loop (lines path)."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "configure(*, render_line, record_error): the Python path's pieces, once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_flowcore", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__flowcore(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_flow, "_flow");
    INTERN(s_tally, "tally");
    INTERN(s_lines, "lines");
    INTERN(s_bad, "bad");
    INTERN(s_records_in, "records_in");
    INTERN(s_records_out, "records_out");
    INTERN(s_dedup_dropped, "dedup_dropped");
#undef INTERN
    return PyModule_Create(&module);
}
