"""CPU helpers: glibc allocator settings, out-of-place activations (both change no numerics), the channels-last
probe and the OpenMP idle policy."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models.common import Conv
from utils.cpu_alloc import keep_freed_memory
from utils.torch_utils import initialize_weights, out_of_place_activations, try_channels_last

ROOT = Path(__file__).resolve().parents[1]


_REUSE_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
from utils.cpu_alloc import keep_freed_memory

def step():  # ten 4 MiB activations, then all freed, as a training step does
    xs = [torch.ones(1 << 20) for _ in range(10)]
    del xs

def faults_of_second_step():
    step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

before = faults_of_second_step()
ok = keep_freed_memory()
print(ok, before, faults_of_second_step())
"""


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_keep_freed_memory_reuses_pages_on_glibc():
    """The point of the change: a repeated step stops page-faulting its freed activations back in (in a fresh
    process, so the test process's allocator is untouched and the 'before' is glibc's default)."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _REUSE_SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=120)
    ok, before, after = out.stdout.split()
    assert ok == "True", out.stderr
    assert int(before) > 1000  # 40 MiB handed back and faulted in again (~10k 4-KiB faults per step here)
    assert int(after) < int(before) / 4, (before, after)


_LARGE_SCRIPT = """
import resource, statistics, sys, torch
sys.path.insert(0, sys.argv[1])
from utils.cpu_alloc import keep_freed_memory

def step():  # 64 MiB blocks: above the largest mmap threshold mallopt accepts (32 MiB)
    xs = [torch.ones(16 << 20) for _ in range(3)]
    del xs

def faults(n=12):  # per step
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return out

ok = keep_freed_memory(large=sys.argv[2] == "large")
print(ok, int(statistics.median(faults()[6:])))  # the heap settles within ~5 steps (measured), not always the same
"""


@pytest.mark.skipif(not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_keep_freed_memory_large_reuses_blocks_above_32_mib():
    """Without large=True a 64 MiB block is still mmapped and faulted in again every step; with it, reused
    (small blocks landing between the big ones may cost another heap extension now and then)."""
    faults = {}
    for mode in ("small", "large"):
        out = subprocess.run([sys.executable, "-c", _LARGE_SCRIPT, str(ROOT), mode], capture_output=True, text=True,
                             timeout=120)
        ok, faults[mode] = out.stdout.split()
        assert ok == "True", out.stderr
    assert int(faults["small"]) > 40000  # 192 MiB = 49k 4-KiB pages faulted in again every step
    assert int(faults["large"]) < int(faults["small"]) / 10, faults


def test_keep_freed_memory_elsewhere_changes_nothing(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    assert keep_freed_memory() is False


def test_out_of_place_activations_same_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(Conv(3, 8, 3), Conv(8, 8, 1), nn.LeakyReLU())
    initialize_weights(model.modules())
    acts = [m for m in model.modules() if isinstance(m, (nn.SiLU, nn.LeakyReLU))]
    assert acts and all(m.inplace for m in acts)
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        out_of_place_activations(model)
    assert not any(m.inplace for m in acts)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


class FlattensFeatures(nn.Module):
    """A block that .view()s (c, h, w) as one dim, which NHWC memory cannot give it."""

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, c * h * w).softmax(-1).view(b, c, h, w)


def test_try_channels_last_switches_or_leaves_the_model_as_it_was():
    probe = torch.zeros(1, 3, 16, 16)
    ok = nn.Sequential(Conv(3, 8, 3), Conv(8, 8, 1)).train()
    assert try_channels_last(ok, probe)
    assert ok[0].conv.weight.is_contiguous(memory_format=torch.channels_last) and ok.training
    bad = nn.Sequential(Conv(3, 8, 3), FlattensFeatures()).train()
    assert not try_channels_last(bad, probe)
    assert bad[0].conv.weight.is_contiguous() and bad.training
    assert bad[0].bn.num_batches_tracked.item() == 0  # probed in eval mode: no BatchNorm statistics moved


def test_cpu_alloc_imports_no_torch_and_sets_a_passive_omp_default():
    """The CLIs call passive_omp_waits() before torch loads; it only helps if importing it loads no torch."""
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); from utils.cpu_alloc import passive_omp_waits; "
            "assert 'torch' not in sys.modules; passive_omp_waits(); print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env = {**os.environ, "OMP_WAIT_POLICY": "ACTIVE"}  # an explicit setting wins
    code = "import os; from utils.cpu_alloc import passive_omp_waits; passive_omp_waits(); print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


@pytest.mark.parametrize("channels_last", [False, True])
def test_val_model_input_is_the_plain_division_and_leaves_a_float_batch_alone(channels_last):
    from engine.val_loop import model_input
    im = torch.randint(0, 256, (2, 3, 8, 12), dtype=torch.uint8)
    x = model_input(im, torch.device("cpu"), False, channels_last)
    assert x.dtype == torch.float32 and torch.equal(x, im.float() / 255)
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    f = im.float()
    y = model_input(f, torch.device("cpu"), False, channels_last)
    assert torch.equal(f, im.float()) and torch.equal(y, x)  # the caller's float tensor is not divided in place
