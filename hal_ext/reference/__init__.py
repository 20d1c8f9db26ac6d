"""Pure-torch implementations with tllib's semantics (SPEC.md): the test oracle, the benchmark
baseline, and the fallback when the native library is missing. Each function computes in the
dtype of its inputs; the tests call them on float64 copies."""
