"""benchmarks/cuda_check.py on CPU (--device cpu --quick): every check row is there, fp16 rows say they ran a
CPU stand-in, DDP is skipped with its reason, the exit code follows the table."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import cuda_check
from benchmarks.cuda_check_parts import Check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_cpu_run_prints_the_table_and_passes(shared_dir):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cuda_check.py"), "--device", "cpu", "--quick"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    table = p.stdout[p.stdout.index("\ncheck "):]
    rows = {m[1].strip(): (m[2], m[3]) for m in re.finditer(r"^([a-e]\. .+?)\s{2,}(PASS|FAIL|SKIP)\s+(.*)$", table, re.M)}
    assert p.returncode == 0, table + p.stderr[-2000:]
    for variant in ("TripletAttention", "ACmix", "CGA", "DAT"):
        status, text = rows[f"a. bf16 train {variant}"]
        assert status == "PASS" and "CPU stand-in" in text and "nan" not in text
    status, text = rows["b. val bf16 vs fp32"]
    d = float(re.search(r"d ([+-][0-9.]+)", text)[1])
    assert status == "PASS" and abs(d) <= cuda_check.BF16_MAP_TOL and "coco8 at 320" in text
    assert rows["c. export onnx+torchscript"][0] == "PASS" and "needs CUDA" in rows["c. export onnx+torchscript"][1]
    assert rows["c. val of the torchscript export"][0] == "PASS"
    assert rows["d. NCCL DDP, 2 GPUs, 1 epoch"] == ("SKIP", "| needs >= 2 CUDA GPUs, 0 here")
    assert re.search(r"\d+\.\d\dx", rows["e. val speed bf16/fp32"][1])
    assert re.search(r"\d+\.\d\dx", rows["e. train step bf16/fp32"][1])
    assert "FAIL 0" in table


def test_any_fail_makes_the_exit_code_non_zero(monkeypatch, capsys):
    fail = [Check("a. fake", "FAIL", "loss nan", "why")]
    monkeypatch.setattr(cuda_check, "check_amp_training", lambda plan: fail)
    monkeypatch.setattr(cuda_check, "check_val", lambda *a: ([Check("b. fake", "PASS")], {}))
    monkeypatch.setattr(cuda_check, "check_export", lambda *a: [Check("c. fake", "SKIP", note="no weights")])
    monkeypatch.setattr(cuda_check, "check_speed", lambda *a: [])
    assert cuda_check.main(["--device", "cpu", "--quick"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^a\. fake +FAIL +loss nan \| why$", out, re.M) and "PASS 1 FAIL 1 SKIP 2" in out, out
    monkeypatch.setattr(cuda_check, "check_amp_training", lambda plan: [])
    assert cuda_check.main(["--device", "cpu", "--quick"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_a_cuda_device_without_cuda_is_one_error_line(capsys):
    assert cuda_check.main(["--device", "0"]) == 2
    assert capsys.readouterr().out.strip().startswith("ERROR: --device 0: no CUDA device here")
