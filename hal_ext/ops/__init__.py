"""One module per fused op: the Python entry point (checks, then the native operator or the
reference) and the op's fake (meta) kernel for torch.compile."""
