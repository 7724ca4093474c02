"""AutoBatch (--batch-size -1): the linear memory fit with fake GPU figures, the CPU fallback, the trainer's use."""
import pytest
import torch
import yaml

from utils.train.autobatch import PROFILE_SIZES, autobatch, fit_batch_size

GB = 1 << 30


def linear_gpu(per_image, fixed, oom_from=None):
    """A fake measure(batch): `fixed` + `per_image` * batch bytes; out of memory from `oom_from` images on."""
    calls = []

    def measure(b):
        calls.append(b)
        return None if oom_from is not None and b >= oom_from else fixed + per_image * b
    return measure, calls


def test_the_fit_solves_for_the_fraction_of_free_memory():
    # 1 GiB fixed + 0.5 GiB per image, 40 GiB free, 80%: (32 - 1) / 0.5 = 62 images
    measured = {b: 1 * GB + 0.5 * GB * b for b in PROFILE_SIZES}
    assert fit_batch_size(measured, 40 * GB, 0.8, 16) == (62, "")
    assert fit_batch_size(measured, 40 * GB, 0.6, 16) == (46, "")  # (24 - 1) / 0.5
    noisy = {b: m * (1.02 if b % 2 else 0.98) for b, m in measured.items()}  # +-2%: still about 62
    assert 58 <= fit_batch_size(noisy, 40 * GB, 0.8, 16)[0] <= 66


def test_a_failed_size_caps_the_batch_below_it():
    measured = {1: 1.5 * GB, 2: 2 * GB, 4: 3 * GB, 8: None}  # the line promises 62, the GPU failed at 8
    assert fit_batch_size(measured, 40 * GB, 0.8, 16) == (4, "")


@pytest.mark.parametrize("measured,why", [
    ({1: GB, 2: None}, "only 1 batch size"),
    ({1: 2 * GB, 2: 2 * GB, 4: 2 * GB}, "did not grow"),
    ({1: GB, 2: 2 * GB, 4: 4 * GB}, "outside 1..1024"),  # 1 GiB per image, 0.5 GiB free: below one image
])
def test_unusable_profiles_fall_back_to_the_default(measured, why):
    batch, message = fit_batch_size(measured, 0.5 * GB, 0.8, 16)
    assert batch == 16 and why in message


def test_autobatch_profiles_until_the_first_failure_with_fake_memory(log_lines):
    measure, calls = linear_gpu(0.25 * GB, 0.5 * GB)
    b = autobatch(torch.nn.Identity(), 640, torch.device("cuda"), fraction=0.9, measure=measure,
                  free_memory=lambda: (20 * GB, 24 * GB))
    assert b == int((20 * 0.9 - 0.5) / 0.25) == 70 and calls == list(PROFILE_SIZES)
    assert any("Using batch size 70" in m for m in log_lines)
    measure, calls = linear_gpu(0.25 * GB, 0.5 * GB, oom_from=4)
    b = autobatch(torch.nn.Identity(), 640, torch.device("cuda"), measure=measure,
                  free_memory=lambda: (20 * GB, 24 * GB))
    assert b == 2 and calls == [1, 2, 4]  # stops at the first failure, uses the largest size that ran


def test_cpu_falls_back_to_16_with_one_message(log_lines):
    assert autobatch(torch.nn.Conv2d(3, 3, 1), 64, torch.device("cpu")) == 16
    said = [m for m in log_lines if "AutoBatch" in m]
    assert len(said) == 1 and "needs a CUDA device" in said[0] and "16" in said[0]


@pytest.mark.usefixtures("one_thread")
def test_training_with_batch_size_minus_one_on_cpu_uses_16(tmp_path):
    import train
    from utils.data.shapes import NAMES, generate_shapes
    root = generate_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=64, seed=1)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}
    train.run(data=data, batch_size=-1, epochs=1, imgsz=64, workers=0, cfg="yolov5n.yaml", noautoanchor=True,
              noplots=True, project=str(tmp_path), name="ab", device="cpu")
    assert yaml.safe_load((tmp_path / "ab" / "opt.yaml").read_text())["batch_size"] == 16
