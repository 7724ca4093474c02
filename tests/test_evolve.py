"""--evolve: YOLOv5's mutation, parent selection and limits (pure), evolve.csv/hyp_evolve.yaml, and `--evolve 2`
end to end at a tiny size."""
import numpy as np
import pytest
import yaml

from utils.eval.metrics import fitness
from utils.train.evolve_math import (META, RESULT_COLUMNS, append_generation, best_generation, constrain, mutate,
                                     next_hyperparameters, read_generations, select_parent, write_best_yaml)
from utils.train.hyp import load_hyp

HYP = load_hyp("hyp.scratch-low.yaml")


def test_fitness_weighs_map50_and_map():
    rows = np.array([[0.9, 0.9, 0.5, 0.3, 1, 1, 1], [0, 0, 0.2, 0.4, 0, 0, 0]])
    assert fitness(rows) == pytest.approx([0.1 * 0.5 + 0.9 * 0.3, 0.1 * 0.2 + 0.9 * 0.4])


def test_parents_come_from_the_top_five_weighted_by_fitness():
    f = [0.9, 0.5, 0.1, 0.3, 0.2, 0.8, 0.05]  # mAP50-95 only: fitness 0.9 * f
    rows = np.array([[0, 0, 0, x, i] for i, x in enumerate(f)])
    rng = np.random.default_rng(0)
    picks = np.array([select_parent(rows, rng)[4] for _ in range(4000)], dtype=int)
    counts = np.bincount(picks, minlength=len(f)) / len(picks)
    assert counts[2] == counts[6] == 0  # not among the 5 fittest
    assert counts[4] < 0.01  # the 5th fittest: weight ~1e-6
    top = 0.9 * np.array([0.9, 0.5, 0.3, 0.8])  # rows 0, 1, 3, 5 against the 5th's 0.9 * 0.2
    want = (top - 0.9 * 0.2) / (top - 0.9 * 0.2).sum()
    assert counts[[0, 1, 3, 5]] == pytest.approx(want, abs=0.03)


def test_mutation_changes_something_keeps_gainless_keys_and_zeros():
    rng = np.random.default_rng(1)
    hyp = {**HYP, "anchors": 3.0, "nbs": 64}
    for _ in range(50):
        child = constrain(mutate(hyp, rng))
        assert child.keys() == hyp.keys() and child != constrain(hyp)
        for k in ("iou_t", "fl_gamma", "perspective", "fliplr", "nbs"):  # gain 0, or not in the table
            assert child[k] == hyp[k]
        for k, v in hyp.items():
            if k in META and v == 0:
                assert child[k] == 0  # multiplicative: 0 stays 0
            if k in META:
                low, high = META[k][1:]
                assert low <= child[k] <= high and child[k] == round(child[k], 5)
                if v != 0:
                    assert 0.3 * v - 1e-5 <= child[k] <= 3 * v + 1e-5 or child[k] in (low, high)


def test_mutation_spread_follows_sigma_and_gain():
    rng = np.random.default_rng(2)
    ratios = np.array([[mutate(HYP, rng)[k] / HYP[k] for k in ("lr0", "momentum")] for _ in range(3000)])
    sd = ratios.std(0)
    # step = N(0,1) * U(0,1) * 0.2 with probability 0.8: sd = 0.2 * sqrt(0.8 / 3) = 0.103, times the gain
    assert sd[0] == pytest.approx(0.2 * np.sqrt(0.8 / 3), rel=0.1)
    assert sd[1] == pytest.approx(0.3 * 0.2 * np.sqrt(0.8 / 3), rel=0.1)


def test_constrain_clips_to_the_table():
    out = constrain({"lr0": 1.0, "momentum": 0.1, "mosaic": 1.7, "box": 0.123456789, "other": 99})
    assert out == {"lr0": 0.1, "momentum": 0.6, "mosaic": 1.0, "box": 0.12346, "other": 99}


def test_csv_rows_best_yaml_and_next_generation(tmp_path):
    csv = tmp_path / "evolve.csv"
    rng = np.random.default_rng(3)
    assert next_hyperparameters(csv, HYP, rng) == constrain(HYP)  # no csv yet: the base hyp itself
    worse, better = {**HYP, "lr0": 0.02}, {**HYP, "lr0": 0.005}
    append_generation(csv, [0.5, 0.5, 0.3, 0.1, 0.05, 0.04, 0.03], worse)
    append_generation(csv, [0.4, 0.4, 0.4, 0.2, 0.05, 0.04, 0.03], better)
    keys, rows = read_generations(csv)
    assert keys == [*RESULT_COLUMNS, *HYP] and rows.shape == (2, 7 + len(HYP))
    assert csv.read_text().splitlines()[0].startswith(" " * 3 + "metrics/precision,")  # '%20s,'
    i, results, hyp = best_generation(csv)
    assert i == 1 and results["metrics/mAP_0.5:0.95"] == 0.2 and hyp["lr0"] == 0.005
    text = write_best_yaml(csv, tmp_path / "hyp_evolve.yaml").read_text()
    assert "# Best generation: 1" in text and "# Last generation: 1" in text
    assert yaml.safe_load(text) == pytest.approx(better) and load_hyp(tmp_path / "hyp_evolve.yaml")
    child = next_hyperparameters(csv, HYP, rng)
    assert child != constrain(better) and child.keys() == HYP.keys()
    with pytest.raises(ValueError, match="continue it with the same --hyp"):
        append_generation(csv, [0] * 7, {"lr0": 0.01})


@pytest.mark.usefixtures("one_thread")
def test_evolve_two_generations_at_a_tiny_size(tmp_path):
    import train
    from utils.callbacks import Callbacks
    from utils.data.shapes import NAMES, generate_shapes

    root = generate_shapes(tmp_path / "shapes", n_train=4, n_val=2, imgsz=64, seed=1)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}
    epochs_seen = []
    cb = Callbacks()
    cb.register_action("on_train_epoch_end", name="user", callback=epochs_seen.append)
    best = train.run(callbacks=cb, data=data, evolve=2, epochs=1, imgsz=64, batch_size=2, workers=0,
                     cfg="yolov5n.yaml", noautoanchor=True, project=str(tmp_path), name="evo")
    d = tmp_path / "evo"
    keys, rows = read_generations(d / "evolve.csv")
    hyp_keys = list(load_hyp("hyp.scratch-low.yaml"))  # --data given: YOLOv5's hyp; no 'anchors' (--noautoanchor)
    assert keys == [*RESULT_COLUMNS, *hyp_keys] and rows.shape == (2, 7 + len(hyp_keys))
    assert (rows[:, 4:7] > 0).all()  # each generation's final epoch was validated (its val losses)
    first, second = (dict(zip(keys[7:], r[7:])) for r in rows)
    assert first == pytest.approx(constrain(load_hyp("hyp.scratch-low.yaml")))
    assert first != second  # generation 1 is a mutation
    i, results, hyp = best_generation(d / "evolve.csv")
    assert best == pytest.approx(tuple(results.values()), abs=1e-5)
    assert yaml.safe_load((d / "hyp_evolve.yaml").read_text()) == pytest.approx(hyp)
    assert (d / "evolve.png").stat().st_size > 0
    assert epochs_seen == [0, 0]  # the user's callbacks saw both generations, once each
    assert not (d / "generation").exists() and not list(d.rglob("*.pt"))  # no checkpoints left behind
