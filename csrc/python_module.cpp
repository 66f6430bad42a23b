// An empty Python module whose import loads the shared library it is linked into, and so runs that library's
// op registrations. setup.py compiles this file once per extension, naming the module with SSWP_MODULE
// (sswp_fast._C: schemas and CPU kernels; sswp_fast._C_cuda: CUDA kernels).

#include <Python.h>

#ifndef SSWP_MODULE
#error "compile with -DSSWP_MODULE=<module name>"
#endif

#define SSWP_STR_(x) #x
#define SSWP_STR(x) SSWP_STR_(x)
#define SSWP_INIT_(name) PyInit_##name
#define SSWP_INIT(name) SSWP_INIT_(name)

extern "C" PyObject* SSWP_INIT(SSWP_MODULE)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, SSWP_STR(SSWP_MODULE), "sswp-fast compiled ops", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
