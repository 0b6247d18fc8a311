// What the Autograd kernels here share: torch::autograd::Function and the dispatcher's
// registration, the two names every Function writes, and the fall-through of the internal
// operators (they implement a forward or backward below autograd: not differentiable themselves).
#pragma once

#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <array>
#include <initializer_list>

namespace arwrap::ops::autograd {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline void fall_through(torch::Library& m, std::initializer_list<const char*> internal_operators) {
  for (const char* name : internal_operators) m.impl(name, torch::CppFunction::makeFallthrough());
}

}  // namespace arwrap::ops::autograd
