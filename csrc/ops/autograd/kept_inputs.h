#pragma once
// Inputs that only the backward under create_graph=True reads. That backward recomputes the gradient
// from the inputs with differentiable ATen ops (differentiable_grads.h); the fused backward does not
// need them (it reads gradients or statistics the forward wrote). The references cost no copy and no
// version-counter check on the fused path (one saved_data entry); the create_graph path checks that
// no input was modified in place since the forward (as a saved variable would), naming it if one was.
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <array>
#include <cstddef>
#include <initializer_list>
#include <vector>

namespace hal_ext {

// `inputs` may hold undefined tensors (absent optional inputs).
inline void keep_inputs(torch::autograd::AutogradContext* ctx, std::initializer_list<at::Tensor> inputs) {
  std::vector<c10::IValue> items;
  items.reserve(2 * inputs.size());
  for (const at::Tensor& input : inputs) items.emplace_back(input);
  for (const at::Tensor& input : inputs) items.emplace_back(input.defined() ? int64_t(input._version()) : int64_t(0));
  ctx->saved_data["kept_inputs"] = c10::ivalue::Tuple::create(std::move(items));
}

// The inputs keep_inputs kept, in order; `op` and `names` name them in the error.
template <size_t N>
std::array<at::Tensor, N> kept_inputs(torch::autograd::AutogradContext* ctx, const char* op,
                                      const std::array<const char*, N>& names) {
  const auto& items = ctx->saved_data.at("kept_inputs").toTupleRef().elements();
  TORCH_INTERNAL_ASSERT(items.size() == 2 * N, op, ": ", items.size() / 2, " kept inputs, expected ", N);
  std::array<at::Tensor, N> inputs;
  for (size_t i = 0; i < N; ++i) {
    inputs[i] = items[i].toTensor();
    const int64_t version = items[N + i].toInt();
    TORCH_CHECK(!inputs[i].defined() || inputs[i]._version() == version, op, ": ", names[i],
                " was modified by an inplace operation after the forward (version ", version, ", now ",
                inputs[i]._version(), "), so its gradient cannot be differentiated (create_graph=True)");
  }
  return inputs;
}

}  // namespace hal_ext
