"""CPU training helpers: glibc allocator settings and out-of-place activations (both change no numerics)."""
import platform

import torch
import torch.nn as nn

from models.common import Conv
from utils.cpu_alloc import keep_freed_memory
from utils.torch_utils import initialize_weights, out_of_place_activations


def test_keep_freed_memory_on_glibc():
    ok = keep_freed_memory()
    assert ok == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    x = torch.randn(4, 1024, 1024)  # 16 MiB: allocations keep working after the change
    assert float((x + 1).sub(x).mean()) == 1.0


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
