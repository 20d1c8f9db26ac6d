"""Drop-in replacements for tllib.alignment: ``mcd``, ``mdd``, ``regda``."""
