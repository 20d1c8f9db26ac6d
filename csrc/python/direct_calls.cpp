// hal_ext._C as a Python module: direct entry points of the overhead-bound losses.
//
// torch.ops.hal_ext.<op>(...) reaches an op through a Python frame, boxes every argument into an IValue
// and wraps every output in a Python tensor (classification MDD returns three, of which the loss is the
// only one the caller keeps). hal_ext._C.<op>(...) calls the same op through its typed dispatcher
// handle straight from the CPython arguments and wraps the loss alone: about 5 us less per forward on
// the 2-core CPU machine, 10% of a small loss's forward+backward. Every dispatch key still applies
// (Autograd, CUDA, Python dispatch modes, functorch), since the call goes through the dispatcher.
// The Python wrappers (hal_ext/ops) use these for exact torch.Tensor arguments only, and never while
// torch.compile traces or a torch-function mode is active: those need the torch.ops route.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <tuple>
#include <utility>

#include "ops/classifier_discrepancy.h"
#include "ops/mcd_entropy.h"
#include "ops/mdd.h"

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

const at::Tensor& tensor_arg(PyObject* arg, const char* name) {
  TORCH_CHECK_TYPE(THPVariable_Check(arg), name, " must be a torch.Tensor, got ", Py_TYPE(arg)->tp_name);
  return THPVariable_Unpack(arg);
}

double float_arg(PyObject* arg, const char* name) {
  TORCH_CHECK_TYPE(PyFloat_Check(arg) || PyLong_Check(arg), name, " must be a number, got ", Py_TYPE(arg)->tp_name);
  const double value = PyFloat_AsDouble(arg);
  if (value == -1.0 && PyErr_Occurred()) throw python_error();
  return value;
}

int64_t int_arg(PyObject* arg, const char* name) {
  TORCH_CHECK_TYPE(PyLong_Check(arg), name, " must be an int, got ", Py_TYPE(arg)->tp_name);
  const long long value = PyLong_AsLongLong(arg);
  if (value == -1 && PyErr_Occurred()) throw python_error();
  return value;
}

// classifier_discrepancy(predictions1, predictions2) -> loss
PyObject* classifier_discrepancy_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("classifier_discrepancy", nargs, 2);
  const at::Tensor& p1 = tensor_arg(args[0], "predictions1");
  const at::Tensor& p2 = tensor_arg(args[1], "predictions2");
  at::Tensor loss;
  {
    GilRelease no_gil;
    loss = classifier_discrepancy(p1, p2);
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

// mcd_entropy(predictions) -> loss (the column means the op also returns stay in the autograd graph)
PyObject* mcd_entropy_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("mcd_entropy", nargs, 1);
  const at::Tensor& p = tensor_arg(args[0], "predictions");
  at::Tensor loss;
  {
    GilRelease no_gil;
    loss = std::get<0>(mcd_entropy(p));
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

// classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, reduction) -> loss, without weights
PyObject* classification_mdd_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("classification_mdd", nargs, 6);
  const at::Tensor& y_s = tensor_arg(args[0], "y_s");
  const at::Tensor& y_s_adv = tensor_arg(args[1], "y_s_adv");
  const at::Tensor& y_t = tensor_arg(args[2], "y_t");
  const at::Tensor& y_t_adv = tensor_arg(args[3], "y_t_adv");
  const double margin = float_arg(args[4], "margin");
  const int64_t reduction = int_arg(args[5], "reduction");
  at::Tensor loss;
  {
    GilRelease no_gil;
    loss = std::get<0>(classification_mdd(y_s, y_s_adv, y_t, y_t_adv, std::nullopt, std::nullopt, margin, reduction));
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

// regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, loss_kind, reduction) -> loss, without weights
PyObject* regression_mdd_direct(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  check_arg_count("regression_mdd", nargs, 7);
  const at::Tensor& y_s = tensor_arg(args[0], "y_s");
  const at::Tensor& y_s_adv = tensor_arg(args[1], "y_s_adv");
  const at::Tensor& y_t = tensor_arg(args[2], "y_t");
  const at::Tensor& y_t_adv = tensor_arg(args[3], "y_t_adv");
  const double margin = float_arg(args[4], "margin");
  const int64_t loss_kind = int_arg(args[5], "loss_kind");
  const int64_t reduction = int_arg(args[6], "reduction");
  at::Tensor loss;
  {
    GilRelease no_gil;
    loss = regression_mdd(y_s, y_s_adv, y_t, y_t_adv, std::nullopt, std::nullopt, margin, loss_kind, reduction);
  }
  return THPVariable_Wrap(std::move(loss));
  END_HANDLE_TH_ERRORS
}

using FastCall = PyObject* (*)(PyObject*, PyObject* const*, Py_ssize_t);

// METH_FASTCALL functions are stored as PyCFunction, as CPython's own modules do.
PyCFunction as_method(FastCall function) { return reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(function)); }

PyMethodDef direct_call_methods[] = {
    {"classifier_discrepancy", as_method(classifier_discrepancy_direct), METH_FASTCALL,
     "classifier_discrepancy(predictions1, predictions2) -> loss"},
    {"mcd_entropy", as_method(mcd_entropy_direct), METH_FASTCALL, "mcd_entropy(predictions) -> loss"},
    {"classification_mdd", as_method(classification_mdd_direct), METH_FASTCALL,
     "classification_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, reduction) -> loss"},
    {"regression_mdd", as_method(regression_mdd_direct), METH_FASTCALL,
     "regression_mdd(y_s, y_s_adv, y_t, y_t_adv, margin, loss_kind, reduction) -> loss"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef direct_call_module = {
    PyModuleDef_HEAD_INIT, "hal_ext._C",
    "Direct entry points of hal_ext's overhead-bound losses (see csrc/python/direct_calls.cpp); the "
    "operators themselves are registered as torch.ops.hal_ext.*.",
    -1, direct_call_methods};

}  // namespace
}  // namespace hal_ext

PyMODINIT_FUNC PyInit__C() { return PyModule_Create(&hal_ext::direct_call_module); }
