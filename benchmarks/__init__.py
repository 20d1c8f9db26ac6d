"""hal_ext's kernel benchmark suite: `python -m benchmarks --help` (or `make bench`).

Files: cases.py (the registry of ops), baselines.py (tllib-semantics eager code not in
hal_ext.reference), floor.py (the do-nothing custom op), timing.py (interleaved timing, copy
bandwidth), memory.py (peak extra memory), runner.py (contenders side by side), train_steps.py
(MCD / MDD / RegDA training iterations), machine.py (who measured), report.py (table, JSON,
Markdown, PNG), __main__.py (command line).
"""
