// The Python-level functions of noisefast._C (csrc/module.cpp lists them in its method table).
#pragma once

#include <Python.h>

// draw_cpu_seed(generator or None) -> int64 tensor [1]: csrc/cpu_seed.cpp.
PyObject* noisefast_draw_cpu_seed(PyObject* module, PyObject* generator);
