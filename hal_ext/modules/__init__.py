"""Drop-in replacements for tllib.modules: ``grl`` (gradient reverse layers), ``gl`` (gradient layers)."""
