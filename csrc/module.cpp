// The Python module noisefast._C. Loading it runs the TORCH_LIBRARY registrations of every
// kernel (torch.ops.noisefast_C.*); its one function, draw_cpu_seed, is the CPU seed draw of the
// noise ops' eager path (csrc/cpu_seed.cpp). Plain CPython API, no pybind11 module.
#include <Python.h>

#include "python_functions.h"

#ifndef NOISEFAST_WITH_CUDA
#define NOISEFAST_WITH_CUDA 0
#endif

static PyMethodDef noisefast_c_methods[] = {
    {"draw_cpu_seed", noisefast_draw_cpu_seed, METH_O,
     "draw_cpu_seed(generator) -> int64 tensor [1]: a seed in [0, 2^63 - 1) drawn from a CPU generator "
     "(None: the default one), the draw of torch.empty(1, dtype=torch.int64).random_(0, 2**63 - 1)"},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef noisefast_c_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "Compiled kernels of noisefast; they register themselves as torch.ops.noisefast_C.*",
    -1, noisefast_c_methods};

extern "C" __attribute__((visibility("default"))) PyObject* PyInit__C(void) {
  PyObject* module = PyModule_Create(&noisefast_c_module);
  if (module == nullptr) return nullptr;
  if (PyModule_AddIntConstant(module, "WITH_CUDA", NOISEFAST_WITH_CUDA) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
