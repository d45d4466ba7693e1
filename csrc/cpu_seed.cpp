// noisefast._C.draw_cpu_seed(generator): the seed of one op call on CPU data, drawn in C++.
//
// The same draw as noisefast.random.draw_seed's Python path, torch.empty(1, dtype=torch.int64)
// .random_(0, 2**63 - 1, generator=generator) (ATen's random_from_to on the CPU: random64() modulo
// the range, under the generator's lock), so a run seeded with torch.manual_seed gets the same
// seeds either way; tests/test_randn.py compares the two draw for draw. It exists for speed: the
// Python path costs ~1.8 us per call (tensor creation and argument parsing), this one ~0.4 us,
// which is a fifth of what a small tensor's noise op costs in all.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/Generator.h>
#include <torch/csrc/autograd/python_variable.h>

#include <mutex>

#include "python_functions.h"

namespace {

constexpr uint64_t kSeedRange = (uint64_t{1} << 63) - 1;  // seeds are drawn from [0, 2^63 - 1)

}  // namespace

PyObject* noisefast_draw_cpu_seed(PyObject* /*module*/, PyObject* generator) {
  try {
    at::Generator gen;
    if (generator == Py_None) {
      gen = at::detail::getDefaultCPUGenerator();
    } else {
      if (PyObject_IsInstance(generator, THPGeneratorClass) != 1) {
        PyErr_Format(PyExc_TypeError, "generator must be a torch.Generator or None, got %s",
                     Py_TYPE(generator)->tp_name);
        return nullptr;
      }
      gen = reinterpret_cast<THPGenerator*>(generator)->cdata;
      if (!gen.device().is_cpu()) {
        PyErr_SetString(PyExc_ValueError, "draw_cpu_seed: the generator must be a CPU generator");
        return nullptr;
      }
    }
    at::Tensor seed = at::empty({1}, at::TensorOptions().dtype(at::kLong));
    {
      auto* cpu_gen = at::check_generator<at::CPUGeneratorImpl>(gen);
      std::lock_guard<std::mutex> lock(gen.mutex());
      seed.data_ptr<int64_t>()[0] = static_cast<int64_t>(cpu_gen->random64() % kSeedRange);
    }
    return THPVariable_Wrap(std::move(seed));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}
