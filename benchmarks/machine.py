"""Who measured: machine name, CPU/GPU model, torch, hal_ext commit and build, date."""
import datetime
import os
import platform
import re
import subprocess

import torch


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text):
    text = re.sub(r"\(R\)|\(TM\)|CPU|Processor|NVIDIA|GeForce|@.*", " ", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_name(device):
    """`cpu-<model>-<cores>c` for CPU runs, the GPU model (e.g. `h200`) for CUDA runs."""
    if torch.device(device).type == "cuda":
        name = slug(torch.cuda.get_device_name(torch.device(device)))
        return re.sub(r"^(h|a|b|l)(\d+).*$", r"\1\2", name)
    return f"cpu-{slug(cpu_model())}-{os.cpu_count()}c"


def git_commit():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        return None


def describe(device, name=None):
    import hal_ext

    info = {
        "machine": name or machine_name(device),
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(torch.device(device)) if torch.device(device).type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "hal_ext_commit": git_commit(),
        "hal_ext_build": hal_ext.build_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return info
