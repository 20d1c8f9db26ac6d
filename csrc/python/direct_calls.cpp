// hal_ext._C as a Python module: direct entry points of the overhead-bound losses and of the keypoint
// losses.
//
// torch.ops.hal_ext.<op>(...) reaches an op through a Python frame, boxes every argument into an IValue
// and wraps every output in a Python tensor (classification MDD returns three, of which the loss is the
// only one the caller keeps). hal_ext._C.<op>(...) calls the same op through its typed dispatcher
// handle straight from the CPython arguments and wraps the loss alone: about 5 us less per forward on
// the 2-core CPU machine, 10% of a small loss's forward+backward. In a training step, where each
// keypoint loss streams tens of MB and the next call finds the caches cold, the direct route and its
// checks in C++ (instead of the Python wrapper's) save 40-90 us per call. Every dispatch key still
// applies (Autograd, CUDA, Python dispatch modes, functorch), since the call goes through the dispatcher.
//
// Each entry point takes the op's common call only: exact torch.Tensor arguments (no subclasses) of
// one supported floating dtype and one shape, plain int/float scalars. For anything else it returns
// None without calling the op, and the Python wrapper (hal_ext/ops) validates the arguments (errors
// that name them) and routes the call. The wrappers never call these while torch.compile traces or a
// torch-function mode is active (those need the torch.ops route), nor under a torch.func transform
// (which takes the pure-torch reference, see hal_ext/_native.py).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "common/checks.h"
#include "ops/classifier_discrepancy.h"
#include "ops/joints_loss.h"
#include "ops/mcd_entropy.h"
#include "ops/mdd.h"
#include "ops/regression_disparity.h"

namespace hal_ext {
namespace {

// Releases the GIL for the op's duration (as torch.ops does); the destructor takes it back, also
// when the op throws, so the error handler runs with the GIL held.
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() { PyEval_RestoreThread(state_); }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

void check_arg_count(const char* op, Py_ssize_t nargs, Py_ssize_t expected) {
  TORCH_CHECK_TYPE(nargs == expected, "hal_ext._C.", op, " takes ", expected, " positional arguments, got ", nargs);
}

// The common call's tensors: `count` exact torch.Tensor objects of one supported dtype and one shape.
bool plain_and_alike(PyObject* const* args, Py_ssize_t count) {
  for (Py_ssize_t i = 0; i < count; ++i) {
    if (!THPVariable_CheckExact(args[i])) return false;
  }
  const at::Tensor& first = THPVariable_Unpack(args[0]);
  if (!is_supported_float(first.scalar_type())) return false;
  for (Py_ssize_t i = 1; i < count; ++i) {
    const at::Tensor& t = THPVariable_Unpack(args[i]);
    if (t.scalar_type() != first.scalar_type() || t.sizes() != first.sizes()) return false;
  }
  return true;
}

// An exact Python float or int (not bool, not a subclass) as a double.
std::optional<double> plain_number(PyObject* arg) {
  if (PyFloat_CheckExact(arg)) return PyFloat_AS_DOUBLE(arg);
  if (!PyLong_CheckExact(arg)) return std::nullopt;
  const double value = PyLong_AsDouble(arg);
  if (value == -1.0 && PyErr_Occurred()) throw python_error();
  return value;
}

// An exact Python int: the wrappers' own reduction and loss codes.
int64_t code_arg(PyObject* arg, const char* name) {
  TORCH_CHECK_TYPE(PyLong_CheckExact(arg), name, " must be an int, got ", Py_TYPE(arg)->tp_name);
  const long long value = PyLong_AsLongLong(arg);
  if (value == -1 && PyErr_Occurred()) throw python_error();
  return value;
}

// Runs `op` (which returns the loss) with the GIL released and wraps the loss for Python.
template <typename Op>
PyObject* loss_without_gil(const Op& op) {
  at::Tensor loss;
  {
    GilRelease no_gil;
    loss = op();
  }
  return THPVariable_Wrap(std::move(loss));
}

// classifier_discrepancy(predictions1, predictions2) -> loss, or None
PyObject* classifier_discrepancy_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("classifier_discrepancy", nargs, 2);
  if (!plain_and_alike(args, 2)) Py_RETURN_NONE;
  return loss_without_gil(
      [&] { return classifier_discrepancy(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1])); });
  END_HANDLE_TH_ERRORS
}

// mcd_entropy(predictions) -> loss, or None (the column means the op also returns stay in the graph)
PyObject* mcd_entropy_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("mcd_entropy", nargs, 1);
  if (!plain_and_alike(args, 1) || THPVariable_Unpack(args[0]).dim() < 1) Py_RETURN_NONE;
  return loss_without_gil([&] { return std::get<0>(mcd_entropy(THPVariable_Unpack(args[0]))); });
  END_HANDLE_TH_ERRORS
}

// classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, reduction) -> loss, or None; no weights.
// The common call also has at least one class (dim 1) in its (N, C, ...) logits.
PyObject* classification_mdd_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("classification_mdd", nargs, 6);
  const int64_t reduction = code_arg(args[5], "reduction");
  const std::optional<double> margin = plain_number(args[4]);
  if (!margin || !plain_and_alike(args, 4)) Py_RETURN_NONE;
  const at::Tensor& y_s = THPVariable_Unpack(args[0]);
  if (y_s.dim() < 2 || y_s.size(1) == 0) Py_RETURN_NONE;
  return loss_without_gil([&] {
    return std::get<0>(classification_mdd(y_s, THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]),
                                          THPVariable_Unpack(args[3]), std::nullopt, std::nullopt, *margin, reduction));
  });
  END_HANDLE_TH_ERRORS
}

// regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, loss_kind, reduction) -> loss, or None; no weights
PyObject* regression_mdd_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("regression_mdd", nargs, 7);
  const int64_t loss_kind = code_arg(args[5], "loss_kind");
  const int64_t reduction = code_arg(args[6], "reduction");
  const std::optional<double> margin = plain_number(args[4]);
  if (!margin || !plain_and_alike(args, 4)) Py_RETURN_NONE;
  return loss_without_gil([&] {
    return regression_mdd(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]),
                          THPVariable_Unpack(args[3]), std::nullopt, std::nullopt, *margin, loss_kind, reduction);
  });
  END_HANDLE_TH_ERRORS
}

// The keypoint losses' common call also has 4-d (B, K, H, W) maps on one device, and a weight that is
// None or an exact tensor of the maps' dtype and device with B*K elements. A weight, or a target of the
// criteria, that needs a gradient (grad mode on) is not the common call: the fused ops differentiate
// only the maps.
bool needs_grad(const at::Tensor& t) { return t.requires_grad() && at::GradMode::is_enabled(); }

bool plain_heatmaps(PyObject* const* maps, PyObject* weight_arg, std::optional<at::Tensor>* weight) {
  if (!plain_and_alike(maps, 2)) return false;
  const at::Tensor& a = THPVariable_Unpack(maps[0]);
  const at::Tensor& b = THPVariable_Unpack(maps[1]);
  if (a.dim() != 4 || a.device() != b.device()) return false;
  if (weight_arg == Py_None) return true;
  if (!THPVariable_CheckExact(weight_arg)) return false;
  const at::Tensor& w = THPVariable_Unpack(weight_arg);
  if (w.scalar_type() != a.scalar_type() || w.device() != a.device() || w.numel() != a.size(0) * a.size(1)) {
    return false;
  }
  if (needs_grad(w)) return false;
  *weight = w;
  return true;
}

// The criteria's common call: (output, target, target_weight) plain heatmaps, a target needing no gradient.
bool plain_criterion_args(PyObject* const* args, std::optional<at::Tensor>* weight) {
  return plain_heatmaps(args, args[2], weight) && !needs_grad(THPVariable_Unpack(args[1]));
}

// joints_kl_loss(output, target, target_weight, reduction, epsilon) -> the op's loss ((B, K) for
// 'none'), or None
PyObject* joints_kl_loss_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("joints_kl_loss", nargs, 5);
  const int64_t reduction = code_arg(args[3], "reduction");
  const std::optional<double> epsilon = plain_number(args[4]);
  std::optional<at::Tensor> weight;
  if (!epsilon || !plain_criterion_args(args, &weight)) Py_RETURN_NONE;
  return loss_without_gil([&] {
    return joints_kl_loss(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), weight, reduction, *epsilon);
  });
  END_HANDLE_TH_ERRORS
}

// joints_mse_loss(output, target, target_weight, reduction) -> loss, or None
PyObject* joints_mse_loss_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("joints_mse_loss", nargs, 4);
  const int64_t reduction = code_arg(args[3], "reduction");
  std::optional<at::Tensor> weight;
  if (!plain_criterion_args(args, &weight)) Py_RETURN_NONE;
  return loss_without_gil(
      [&] { return joints_mse_loss(THPVariable_Unpack(args[0]), THPVariable_Unpack(args[1]), weight, reduction); });
  END_HANDLE_TH_ERRORS
}

// regression_disparity(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon,
// num_keypoints, height, width) -> the op's loss, or None. The last three are what the pseudo-label
// generator requires of y's shape (-1: anything). y enters detached: its peaks are pseudo labels.
PyObject* regression_disparity_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("regression_disparity", nargs, 12);
  const int64_t mode = code_arg(args[3], "mode");
  const int64_t generator = code_arg(args[5], "generator");
  const int64_t criterion = code_arg(args[6], "criterion");
  const int64_t reduction = code_arg(args[7], "reduction");
  int64_t expected[3];  // the generator's attributes: anything but an exact int is not the common call
  for (int d = 0; d < 3; ++d) {
    if (!PyLong_CheckExact(args[9 + d])) Py_RETURN_NONE;
    expected[d] = code_arg(args[9 + d], "num_keypoints, height and width");
  }
  const std::optional<double> sigma = plain_number(args[4]);
  const std::optional<double> epsilon = plain_number(args[8]);
  std::optional<at::Tensor> weight;
  if (!sigma || !epsilon || !(*sigma > 0 && std::isfinite(*sigma)) || !plain_heatmaps(args, args[2], &weight)) {
    Py_RETURN_NONE;
  }
  const at::Tensor& y = THPVariable_Unpack(args[0]);
  for (int d = 0; d < 3; ++d) {
    if (expected[d] >= 0 && y.size(d + 1) != expected[d]) Py_RETURN_NONE;
  }
  return loss_without_gil([&] {
    return regression_disparity(y.detach(), THPVariable_Unpack(args[1]), weight, mode, *sigma, generator, criterion,
                                reduction, *epsilon);
  });
  END_HANDLE_TH_ERRORS
}

using FastCall = PyObject* (*)(PyObject*, PyObject* const*, Py_ssize_t);

// METH_FASTCALL functions are stored as PyCFunction, as CPython's own modules do.
PyCFunction as_method(FastCall function) { return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(function)); }

PyMethodDef direct_call_methods[] = {
    {"classifier_discrepancy", as_method(classifier_discrepancy_direct), METH_FASTCALL,
     "classifier_discrepancy(predictions1, predictions2) -> loss, or None for an uncommon call"},
    {"mcd_entropy", as_method(mcd_entropy_direct), METH_FASTCALL,
     "mcd_entropy(predictions) -> loss, or None for an uncommon call"},
    {"classification_mdd", as_method(classification_mdd_direct), METH_FASTCALL,
     "classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, reduction) -> loss, or None for an uncommon call"},
    {"regression_mdd", as_method(regression_mdd_direct), METH_FASTCALL,
     "regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, loss_kind, reduction) -> loss, or None for an uncommon "
     "call"},
    {"joints_kl_loss", as_method(joints_kl_loss_direct), METH_FASTCALL,
     "joints_kl_loss(output, target, target_weight, reduction, epsilon) -> loss, or None for an uncommon call"},
    {"joints_mse_loss", as_method(joints_mse_loss_direct), METH_FASTCALL,
     "joints_mse_loss(output, target, target_weight, reduction) -> loss, or None for an uncommon call"},
    {"regression_disparity", as_method(regression_disparity_direct), METH_FASTCALL,
     "regression_disparity(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, num_keypoints, "
     "height, width) -> loss, or None for an uncommon call"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef direct_call_module = {
    PyModuleDef_HEAD_INIT, "hal_ext._C",
    "Direct entry points of hal_ext's overhead-bound losses (see csrc/python/direct_calls.cpp); the "
    "operators themselves are registered as torch.ops.hal_ext.*.",
    -1, direct_call_methods};

}  // namespace
}  // namespace hal_ext

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&hal_ext::direct_call_module); }
