/* untrack(obj): take one object out of the cyclic garbage collector's lists.

   What ``balance.untrack`` wraps (the pure-Python build reaches the same C API through ctypes).
   Only for objects that reference nothing but atomic values (str, int, bytes, None, tuples of
   them): such an object cannot be part of a reference cycle, so reference counting frees it
   and the collector has nothing to find in it. A collection's cost is then that of the objects
   in flight, not of the millions of pending holds a shard keeps.

   Safe on any object: one without GC support is left alone, and CPython's PyObject_GC_UnTrack
   does nothing to an object already untracked; a tracked type's dealloc (mypyc's native
   classes and heap types alike) untracks again first, and PyObject_GC_Del unlinks only a
   tracked object. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *
untrack(PyObject *module, PyObject *obj)
{
    (void)module;
    if (PyObject_IS_GC(obj)) {
        PyObject_GC_UnTrack(obj);
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"untrack", untrack, METH_O, "Take obj out of the cyclic GC's lists (PyObject_GC_UnTrack)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "balance._untrack", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__untrack(void)
{
    return PyModule_Create(&module);
}
