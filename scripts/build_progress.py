"""Filters `setup.py build_ext` output of the hal_ext build down to its configuration, one line per
compiled file ("[3/12] compiling csrc/ops/cpu/..."), and errors. The full log goes to build/build.log."""
import re
import sys

STEP = re.compile(r"^\s*(\[\d+/\d+\])\s.*\s-c\s+(\S+\.(?:cpp|cu))\b")
KEEP = re.compile(r"hal_ext build configuration|^\s{2,}(torch|CUDA|arch|C\+\+|MAX_JOBS|sources)\s|error|Error|Successfully installed")

for line in sys.stdin:
    step = STEP.search(line)
    if step:
        print(f"    {step.group(1)} compiling {step.group(2).split('/csrc/')[-1]}", flush=True)
    elif KEEP.search(line):
        print("    " + line.strip()[:300], flush=True)
