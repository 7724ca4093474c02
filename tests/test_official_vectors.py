"""Our blocks against vectors made by running the official code (tests/data/official/SOURCE.md).

Each file was produced outside this project by the unmodified official module at the commit it names:
the constructor config, the state_dict (official keys; weights and BN statistics moved off their init),
an input, the eval-mode output and the input gradient for a given upstream gradient. Our block of the same
class name is built from that config with our defaults for every other argument, loads the state_dict
strict and must reproduce output and input gradient to 1e-5 of their largest magnitude. These are the
numeric truth for the four seed blocks (Triplet, ACmix, EfficientViT CGA/LocalWindowAttention, DAT).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models.common  # every block, under its official class name

DATA = Path(__file__).resolve().parent / "data" / "official"
FILES = sorted(p.name for p in DATA.glob("*.pt"))
SEED_BLOCKS = {"TripletAttention", "ACmix", "CascadedGroupAttention", "LocalWindowAttention", "DAttentionBaseline"}
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def load(name: str) -> dict:
    return torch.load(DATA / name, weights_only=True)


def our_block(vec: dict, **extra) -> torch.nn.Module:
    """Our class of the official name, built from the official config (plus `extra`), official weights, eval."""
    m = getattr(models.common, vec["class"])(**vec["config"], **extra)
    m.load_state_dict(vec["state_dict"], strict=True)
    return m.eval()


def forward_backward(m: torch.nn.Module, vec: dict):
    """(output, input gradient) for the vector's input and upstream gradient."""
    x = vec["input"].clone().requires_grad_(True)
    y = m(x)
    y.backward(vec["grad_output"])
    return y.detach(), x.grad


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != official {tuple(want.shape)}"
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= TOL * scale, f"{what}: max|diff| {err:.2e} > {TOL:g} x max|official| {scale:.3g}"


def test_every_seed_block_has_vectors_with_their_source():
    assert {load(f)["class"] for f in FILES} >= SEED_BLOCKS, f"missing vectors in {DATA}"
    for f in FILES:
        vec = load(f)
        assert vec["mode"] == "eval" and vec["dtype"] == "float32", f
        assert vec["source"]["repo"] and len(vec["source"]["commit"]) == 40, f


@pytest.mark.parametrize("name", FILES)
def test_default_block_reproduces_official_output_and_input_gradient(name):
    vec = load(name)
    y, grad = forward_backward(our_block(vec), vec)
    assert_close(y, vec["output"], f"{name} output")
    assert_close(grad, vec["grad_input"], f"{name} input gradient")


@pytest.mark.parametrize("name", ["dat.pt", "dat_nonsquare.pt"])
def test_dat_tuple_return_gives_official_positions_and_reference_points(name):
    """return_tuple=True is the official (y, pos, reference) return; (B, groups, Hk, Wk, 2) in (y, x)."""
    vec = load(name)
    with torch.no_grad():
        y, pos, ref = our_block(vec, return_tuple=True)(vec["input"])
    assert_close(y, vec["output"], f"{name} output")
    for got, want, what in zip((pos, ref), vec["output_rest"], ("pos", "reference")):
        assert_close(got, want, f"{name} {what}")


def test_lwa_pad_mask_is_an_opt_in_fix():
    """At 20x20 (7x7 windows, padded to 21) the mask changes the numbers, so it is off by default; where
    the map is a whole number of windows (14x14) or one window (7x7) there is no padding and it changes nothing."""
    padded = load("lwa_res20_win7.pt")
    with torch.no_grad():
        masked = our_block(padded, pad_mask=True)(padded["input"])
    err = (masked - padded["output"]).abs().max() / padded["output"].abs().max()
    assert err > 1e-2, "the padding mask should change the official numbers at 20x20"
    for name in ("lwa_res14_win7.pt", "lwa_res7_win7.pt"):
        vec = load(name)
        y, grad = forward_backward(our_block(vec, pad_mask=True), vec)
        assert_close(y, vec["output"], f"{name} output with pad_mask=True")
        assert_close(grad, vec["grad_input"], f"{name} input gradient with pad_mask=True")


def test_triplet_train_mode_uses_batch_statistics_like_the_official_module():
    """triplet_bnstats.pt also holds the official module's train-mode output and input gradient (BN on batch
    statistics) for the same input and upstream gradient."""
    vec = load("triplet_bnstats.pt")
    m = our_block(vec).train()
    x = vec["input"].clone().requires_grad_(True)
    y = m(x)
    y.backward(vec["grad_output"])
    assert_close(y.detach(), vec["train_output"], "train-mode output")
    assert_close(x.grad, vec["train_grad_input"], "train-mode input gradient")
