#pragma once
// at::parallel_for for hal_ext's CPU kernels. Include this instead of <ATen/Parallel.h>.
//
// With torch's OpenMP backend, at::parallel_for is an inline template whose parallel region is an
// `omp parallel` pragma compiled into *this* library: built without -fopenmp, the pragma is
// silently dropped and every kernel runs on one thread. setup.py passes -fopenmp for that backend;
// this guard turns a build that lost the flag into a compile error instead of a 2x-slower library.
#include <ATen/Config.h>
#include <ATen/Parallel.h>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "torch uses OpenMP: build hal_ext's CPU kernels with -fopenmp, else at::parallel_for runs on one thread"
#endif
