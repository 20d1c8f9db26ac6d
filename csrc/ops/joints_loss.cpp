// Schemas and dispatcher entry points of hal_ext::joints_mse_loss and hal_ext::joints_kl_loss
// (tllib's JointsMSELoss / JointsKLLoss; math in joints_loss_math.h).
#include "joints_loss.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/ones_like.h>
#include <torch/library.h>

namespace hal_ext {

namespace {
template <typename Fn>
auto find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}
}  // namespace

at::Tensor joints_mse_loss(const at::Tensor& output, const at::Tensor& target,
                           const std::optional<at::Tensor>& target_weight, int64_t reduction,
                           std::optional<at::ScalarType> out_dtype) {
  static auto op = find_op<decltype(joints_mse_loss)>("hal_ext::joints_mse_loss");
  return op.call(output, target, target_weight, reduction, out_dtype);
}

at::Tensor _joints_mse_loss_backward(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                     const std::optional<at::Tensor>& target_weight, int64_t reduction) {
  static auto op = find_op<decltype(_joints_mse_loss_backward)>("hal_ext::_joints_mse_loss_backward");
  return op.call(grad, output, target, target_weight, reduction);
}

at::Tensor joints_kl_loss(const at::Tensor& output, const at::Tensor& target,
                          const std::optional<at::Tensor>& target_weight, int64_t reduction, double epsilon,
                          std::optional<at::ScalarType> out_dtype) {
  static auto op = find_op<decltype(joints_kl_loss)>("hal_ext::joints_kl_loss");
  return op.call(output, target, target_weight, reduction, epsilon, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> _joints_kl_loss_forward(const at::Tensor& output, const at::Tensor& target,
                                                           const std::optional<at::Tensor>& target_weight,
                                                           int64_t reduction, double epsilon,
                                                           std::optional<at::ScalarType> out_dtype) {
  static auto op = find_op<decltype(_joints_kl_loss_forward)>("hal_ext::_joints_kl_loss_forward");
  return op.call(output, target, target_weight, reduction, epsilon, out_dtype);
}

at::Tensor _joints_kl_loss_backward(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                    const std::optional<at::Tensor>& target_weight, const at::Tensor& stats,
                                    int64_t reduction, double epsilon) {
  static auto op = find_op<decltype(_joints_kl_loss_backward)>("hal_ext::_joints_kl_loss_backward");
  return op.call(grad, output, target, target_weight, stats, reduction, epsilon);
}

std::tuple<at::Tensor, at::Tensor> _joints_kl_loss_with_grad(const at::Tensor& output, const at::Tensor& target,
                                                             const std::optional<at::Tensor>& target_weight,
                                                             int64_t reduction, double epsilon,
                                                             std::optional<at::ScalarType> out_dtype) {
  static auto op = find_op<decltype(_joints_kl_loss_with_grad)>("hal_ext::_joints_kl_loss_with_grad");
  return op.call(output, target, target_weight, reduction, epsilon, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> _joints_mse_loss_with_grad(const at::Tensor& output, const at::Tensor& target,
                                                              const std::optional<at::Tensor>& target_weight,
                                                              int64_t reduction,
                                                              std::optional<at::ScalarType> out_dtype) {
  static auto op = find_op<decltype(_joints_mse_loss_with_grad)>("hal_ext::_joints_mse_loss_with_grad");
  return op.call(output, target, target_weight, reduction, out_dtype);
}

namespace joints_loss {

bool fused_grad_supported(const at::Tensor& output) {
  const auto dtype = output.scalar_type();
  return dtype == at::kFloat || dtype == at::kDouble;
}

std::tuple<at::Tensor, at::Tensor> joints_mse_loss_with_grad_composite(const at::Tensor& output,
                                                                       const at::Tensor& target,
                                                                       const std::optional<at::Tensor>& target_weight,
                                                                       int64_t reduction,
                                                                       std::optional<at::ScalarType> out_dtype) {
  at::Tensor loss = joints_mse_loss(output, target, target_weight, reduction, out_dtype);
  at::Tensor grad = _joints_mse_loss_backward(at::ones_like(loss), output, target, target_weight, reduction);
  return {loss, grad};
}

std::tuple<at::Tensor, at::Tensor> joints_kl_loss_with_grad_composite(const at::Tensor& output,
                                                                      const at::Tensor& target,
                                                                      const std::optional<at::Tensor>& target_weight,
                                                                      int64_t reduction, double epsilon,
                                                                      std::optional<at::ScalarType> out_dtype) {
  auto [loss, stats] = _joints_kl_loss_forward(output, target, target_weight, reduction, epsilon, out_dtype);
  at::Tensor grad = _joints_kl_loss_backward(at::ones_like(loss), output, target, target_weight, stats, reduction,
                                             epsilon);
  return {loss, grad};
}

}  // namespace joints_loss

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("joints_mse_loss(Tensor output, Tensor target, Tensor? target_weight, int reduction, "
        "ScalarType? out_dtype=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_joints_mse_loss_backward(Tensor grad, Tensor output, Tensor target, Tensor? target_weight, "
        "int reduction) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("joints_kl_loss(Tensor output, Tensor target, Tensor? target_weight, int reduction, float epsilon, "
        "ScalarType? out_dtype=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_joints_kl_loss_forward(Tensor output, Tensor target, Tensor? target_weight, int reduction, "
        "float epsilon, ScalarType? out_dtype=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_joints_kl_loss_backward(Tensor grad, Tensor output, Tensor target, Tensor? target_weight, Tensor stats, "
        "int reduction, float epsilon) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_joints_mse_loss_with_grad(Tensor output, Tensor target, Tensor? target_weight, int reduction, "
        "ScalarType? out_dtype=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_joints_kl_loss_with_grad(Tensor output, Tensor target, Tensor? target_weight, int reduction, "
        "float epsilon, ScalarType? out_dtype=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(hal_ext, CompositeExplicitAutograd, m) {
  m.impl("_joints_mse_loss_with_grad", &joints_loss::joints_mse_loss_with_grad_composite);
  m.impl("_joints_kl_loss_with_grad", &joints_loss::joints_kl_loss_with_grad_composite);
}

}  // namespace hal_ext
