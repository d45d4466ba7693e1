// The Python module noisefast._C. It holds no functions: loading it runs the TORCH_LIBRARY
// registrations of every kernel (torch.ops.noisefast_C.*). Plain CPython API, no pybind11,
// which keeps the build short.
#include <Python.h>

#ifndef NOISEFAST_WITH_CUDA
#define NOISEFAST_WITH_CUDA 0
#endif

static struct PyModuleDef noisefast_c_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "Compiled kernels of noisefast; they register themselves as torch.ops.noisefast_C.*",
    -1, nullptr};

extern "C" __attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  PyObject* module = PyModule_Create(&noisefast_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "WITH_CUDA", NOISEFAST_WITH_CUDA) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
