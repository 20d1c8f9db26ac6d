"""The benchmark suite's machinery on one tiny case: the command runs end to end and writes JSON and
Markdown with the documented fields (no timing assertions)."""
import json

import os

import pytest
import torch

from benchmarks import __main__ as bench_main
from benchmarks import cases, kernel_profile, report, runner, timing
from benchmarks.floor import floor_op
from helpers import NATIVE


def test_suite_writes_json_and_markdown(tmp_path):
    rc = bench_main.main(["--quick", "--ops", "classifier_discrepancy", "--shapes", "4x5", "--modes", "fwd,fwd+bwd",
                          "--reps", "2", "--device", "cpu", "--contenders", "eager,hal_ext,floor", "--train", "none", "--bandwidth-mib", "8",
                          "--out", str(tmp_path), "--name", "tiny", "--machine", "test-machine"])
    assert rc == 0
    result = json.loads((tmp_path / "tiny.json").read_text())
    meta = result["meta"]
    for key in ("machine", "cpu", "torch", "hal_ext_commit", "date", "preset", "dtype", "bandwidth"):
        assert key in meta, key
    assert meta["machine"] == "test-machine" and meta["bandwidth"]["gbps"] > 0
    assert [(r["op"], r["shape"], r["mode"]) for r in result["results"]] == [
        ("classifier_discrepancy", [4, 5], "fwd"), ("classifier_discrepancy", [4, 5], "fwd+bwd")]
    for row in result["results"]:
        assert row["bytes"] > 0 and row["hal_ext_gbps"] > 0 and "hal_ext_over_floor" in row
        assert set(row["contenders"]) == {"eager", "hal_ext", "floor"}
        for name, c in row["contenders"].items():
            assert "error" not in c, (name, c)
            assert c["reps"] == 2 and c["q1_s"] <= c["median_s"] <= c["q3_s"]
            assert c["memory"]["peak_bytes"] >= 0
            # one direction everywhere: contenders over hal_ext, hal_ext over the floor
            assert ("ratio_to_hal_ext" in c) == (name != "floor"), name
        assert row["contenders"]["eager"]["ratio_to_hal_ext"] > 0
    md = (tmp_path / "tiny.md").read_text()
    assert "test-machine" in md and "| classifier_discrepancy | 4x5 | fwd+bwd |" in md
    for column in report.TABLE_COLUMNS:
        assert column in md
    assert (tmp_path / "tiny.png").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["--shapes", "3x"], "argument --shapes: '3x' is not a shape"),
    (["--shapes", "32x31,ax4"], "argument --shapes: 'ax4' is not a shape"),
    (["--ops", "entropy,nope"], "argument --ops: nope: expected a comma-separated subset of"),
    (["--modes", "bwd"], "argument --modes: bwd: expected a comma-separated subset of fwd,fwd+bwd"),
    (["--reps", "0"], "argument --reps: expected a positive integer, got '0'"),
    (["--device", "tpu"], "argument --device: expected cpu, cuda, cuda:N or auto, got 'tpu'"),
    (["--record", "--out", "x"], "argument --record: not allowed with --out"),
])
def test_bad_options_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: python -m benchmarks") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(SystemExit) as exit_info:
        bench_main.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "argument --device: cuda requested, but this machine has no usable CUDA device" in capsys.readouterr().err


def test_default_output_is_ignored_by_git():
    import subprocess
    root = bench_main.ROOT
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
        pytest.skip("not a git checkout of its own (make test-asan's copy of the tree lies inside build/)")
    probe = f"{bench_main.RUNS}/cpu-some-machine-2c/quick.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=root)
    assert ignored.returncode == 0, f"{probe} is not ignored by git"
    committed = subprocess.run(["git", "check-ignore", "-q", f"{bench_main.RESULTS}/cpu-some-machine-2c/quick.json"],
                               cwd=root)
    assert committed.returncode == 1, "--record's folder must not be ignored"


def test_missing_api_is_skipped_with_a_note():
    case = cases.Case("absent_op", "hal_ext.nowhere.op", "overhead", lambda s, d, t: [torch.rand(s)],
                      lambda s: (torch.sum, "torch.sum"), lambda s: cases.public("hal_ext.nowhere", "op"),
                      lambda s, b, m: 0, {"quick": [(3,)], "full": [(3,)], "sweep": []}, diff=(0,))
    lines = []
    rows, skipped = runner.run_all([case], {"preset": runner.PRESETS["quick"], "device": "cpu"},
                                   log=lambda *a, **k: lines.append(a[0]))
    assert rows == [] and skipped[0]["op"] == "absent_op" and "hal_ext.nowhere.op" in skipped[0]["reason"]
    assert len(lines) == 1


def test_every_case_declares_shapes_and_bytes():
    for case in cases.all_cases():
        assert case.shapes["quick"] and case.shapes["full"] and case.shapes["sweep"], case.name
        inputs = case.make_inputs(case.shapes["quick"][0], "cpu", torch.float32)
        assert all(i < len(inputs) for i in case.diff)
        for mode in case.modes:
            assert case.bytes(case.shapes["quick"][0], 4, mode) > 0


@pytest.mark.parametrize("outputs", ["scalar", "like", "like2"])
def test_floor_op_has_the_op_signature(outputs):
    a, b = torch.rand(3, 4, requires_grad=True), torch.rand(3, 4)
    out = floor_op(2, outputs)(a, b)
    outs = out if isinstance(out, tuple) else (out,)
    assert outs[0].shape == (() if outputs == "scalar" else (3, 4))
    (grad_a,) = torch.autograd.grad(outs[0], [a], torch.ones_like(outs[0]))
    assert grad_a.shape == a.shape


def test_summary_statistics():
    s = timing.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"median_s": 3.0, "q1_s": 2.0, "q3_s": 4.0, "reps": 5}


def test_amp_mode_runs_every_contender_under_autocast(tmp_path, monkeypatch):
    seen = []
    real = runner._under_autocast

    def spy(fn, device, dtype):
        wrapped = real(fn, device, dtype)

        def run(*inputs):
            out = wrapped(*inputs)
            seen.append(out.dtype)
            return out
        return run
    monkeypatch.setattr(runner, "_under_autocast", spy)
    rc = bench_main.main(["--quick", "--amp", "--ops", "classification_mdd", "--shapes", "4x5", "--reps", "2",
                          "--device", "cpu", "--contenders", "eager,hal_ext", "--bandwidth-mib", "8", "--no-memory",
                          "--out", str(tmp_path), "--machine", "test-machine"])
    assert rc == 0
    result = json.loads((tmp_path / "quick-amp-bfloat16-partial.json").read_text())
    assert result["meta"]["amp"] and result["meta"]["dtype"] == "bfloat16" and result["train_steps"] == []
    (row,) = result["results"]
    assert row["dtype"] == "autocast-bfloat16" and set(row["contenders"]) == {"eager", "hal_ext"}
    # tllib's composition and hal_ext both return float32 under CPU autocast (cross_entropy, nll_loss)
    assert seen and all(dtype == torch.float32 for dtype in seen)


@pytest.mark.skipif(not NATIVE, reason="the profile names hal_ext's operators, which need the native library")
def test_kernel_profile_names_the_ops_kernels(capsys):
    kernel_profile.main(["--device", "cpu", "--ops", "shift_log", "--shape", "256x1000", "--contenders", "hal_ext",
                         "--iters", "1"])
    out = capsys.readouterr().out
    assert "== shift_log 256x1000 fwd+bwd: 5 MB to move" in out  # 5 passes over 256,000 floats
    assert "hal_ext::shift_log" in out and "hal_ext::_shift_log_backward" in out
