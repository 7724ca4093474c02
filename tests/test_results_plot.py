"""results.png leaves the epochs that were not validated (--noval: all but the last) empty, not zeros."""
import numpy as np

from utils.train.results import (METRIC_KEYS, RESULT_KEYS, VAL_LOSS_KEYS, append_results, panel_series,
                                 plot_results, read_results, validated_rows)

TRAIN_ONLY = [0.09, 0.05, 0.03] + [0.0] * 7 + [0.01, 0.01, 0.01]  # as the trainer writes a non-validated epoch


def validated_row(i):
    return [0.08, 0.04, 0.02, 0.1 * i, 0.2, 0.3, 0.05 * i, 0.07, 0.03, 0.02, 0.01, 0.01, 0.01]


def write(tmp_path, rows):
    f = tmp_path / "results.csv"
    for epoch, values in enumerate(rows):
        append_results(f, epoch, values)
    return f


def test_noval_run_plots_only_the_validated_epoch(tmp_path):
    f = write(tmp_path, [TRAIN_ONLY, TRAIN_ONLY, TRAIN_ONLY, validated_row(3)])
    names, data = read_results(f)
    assert validated_rows(names, data).tolist() == [False, False, False, True]
    panels = {title: (x, y) for title, x, y in panel_series(names, data)}
    assert len(panels) == 10
    for k in METRIC_KEYS + VAL_LOSS_KEYS:
        x, y = panels[k]
        assert x.tolist() == [3] and y.tolist() == [data[3, names.index(k)]]
    x, y = panels["train/box_loss"]
    assert x.tolist() == [0, 1, 2, 3] and y.tolist() == [0.09, 0.09, 0.09, 0.08]  # training is every epoch
    out = plot_results(f)
    assert out == tmp_path / "results.png" and out.stat().st_size > 0


def test_a_validated_epoch_with_zero_metrics_is_still_plotted(tmp_path):
    """An untrained model validates to P = R = mAP = 0, but its val losses are positive: a real point at 0."""
    zero_map = [0.1, 0.1, 0.1, 0, 0, 0, 0, 0.2, 0.3, 0.4, 0.01, 0.01, 0.01]
    f = write(tmp_path, [zero_map, validated_row(1), TRAIN_ONLY])
    names, data = read_results(f)
    assert validated_rows(names, data).tolist() == [True, True, False]
    panels = {title: (x, y) for title, x, y in panel_series(names, data)}
    assert panels["metrics/mAP_0.5:0.95"][0].tolist() == [0, 1]
    assert panels["metrics/mAP_0.5:0.95"][1].tolist() == [0, 0.05]


def test_every_epoch_validated_keeps_every_point(tmp_path):
    f = write(tmp_path, [validated_row(i) for i in range(1, 5)])
    names, data = read_results(f)
    assert all(len(x) == 4 for _, x, _ in panel_series(names, data))
    assert names[1:] == RESULT_KEYS and np.isfinite(data).all()
