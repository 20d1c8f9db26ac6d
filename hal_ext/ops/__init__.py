"""One module per fused op: the Python entry point (checks, then the native operator or the
reference) and the op's fake (meta) kernel for torch.compile. Importing this package imports every
op module, so all fake kernels are registered as soon as hal_ext is imported."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
