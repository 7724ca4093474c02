"""ACmix ResNet-50: parameter count from the per-layer formula, stage layout, output shape on a small input."""
import pytest
import torch

from models.attention.acmix import ACmix
from models.resnet import ACmixBottleneck, acmix_resnet50

STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]  # (planes, blocks, stride) of ResNet-50


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def acmix_params(c, head, kc):
    """ACmix(c, c): conv1..3 with bias, conv_p 2->c/head with bias, fc (no bias), dep_conv (no bias), 2 rates."""
    return 3 * (c * c + c) + 3 * (c // head) + 3 * head * kc * kc + c * kc ** 4 + 2


def expected_params(num_classes, head, kc):
    total = 3 * 64 * 7 * 7 + 2 * 64  # stem conv + BN
    inplanes = 64
    for planes, blocks, _ in STAGES:
        out = 4 * planes
        for i in range(blocks):
            total += inplanes * planes + 2 * planes  # 1x1 reduce + BN
            total += acmix_params(planes, head, kc) + 2 * planes  # ACmix + BN
            total += planes * out + 2 * out  # 1x1 expand + BN
            if i == 0:
                total += inplanes * out + 2 * out  # strided 1x1 shortcut + BN
            inplanes = out
    return total + 2048 * num_classes + num_classes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return acmix_resnet50().eval()


def test_parameter_count_matches_per_layer_formula(model):
    assert sum(p.numel() for p in model.parameters()) == expected_params(1000, 4, 3)
    small = acmix_resnet50(num_classes=10, k_att=5, head=8, k_conv=3)
    assert sum(p.numel() for p in small.parameters()) == expected_params(10, 8, 3)


def test_stage_layout_and_acmix_strides(model):
    for stage_idx, (planes, blocks, stride) in enumerate(STAGES, 1):
        stage = getattr(model, f"layer{stage_idx}")
        assert len(stage) == blocks
        for i, block in enumerate(stage):
            assert isinstance(block, ACmixBottleneck) and isinstance(block.conv2, ACmix)
            assert block.conv2.stride == (stride if i == 0 else 1) and block.conv2.out_planes == planes
            assert (block.downsample is not None) == (i == 0)
    acmix = model.layer1[0].conv2
    assert acmix.rate1.item() == 0.5 and acmix.kernel_att == 7 and acmix.head == 4
    # the ResNet-wide kaiming init re-initialises dep_conv too (official behaviour): no longer one-hot
    assert (acmix.dep_conv.weight != 0).sum() > acmix.out_planes * 9


def test_output_shape_on_small_input(model):
    sizes = []
    hooks = [getattr(model, f"layer{i}").register_forward_hook(lambda m, a, y: sizes.append(tuple(y.shape)))
             for i in range(1, 5)]
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert sizes == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]  # 2x2 < official minimum
