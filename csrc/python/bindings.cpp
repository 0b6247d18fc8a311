// pybind11 bindings: the only file that knows about Python.
// The operators themselves are reached through torch.ops.arwrap.* (registered when
// this module loads libarwrap); this module adds what is not an operator.
#include <arwrap/arwrap.h>

#include <torch/extension.h>

PYBIND11_MODULE(_C, m) {
  m.doc() = "arwrap_cpp native core (libarwrap)";
  m.attr("__version__") = ARWRAP_VERSION;
  m.def("built_with_cuda", &arwrap::built_with_cuda, "True when libarwrap has its CUDA kernels");
}
