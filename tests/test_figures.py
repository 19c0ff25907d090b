"""The figures as pictures: tick labels present and apart on every axis, the smoothing window said on the axis it
smooths, Figure 3's legend right under its images (runner/figures.py, finetune/figures.py)."""

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")


def _shown_labels(ax) -> list:
    """The x tick labels drawn inside the axis range: (text, window extent)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lo, hi = sorted(ax.get_xlim())
    return [
        (t.get_text(), t.get_window_extent(renderer))
        for v, t in zip(ax.get_xticks(), ax.get_xticklabels())
        if t.get_text() and lo <= v <= hi
    ]


def _assert_apart(labels) -> None:
    for (a, box_a), (b, box_b) in itertools.combinations(labels, 2):
        assert not box_a.overlaps(box_b), f"tick labels {a!r} and {b!r} overlap"


def test_curves_label_a_dense_n_grid_without_overlapping_labels():
    """curves.png: a tick at every N of the grid; the labels that fit, never two on top of each other (the grid
    4..56 every 8 once read '324048 56'), the ends and the powers of two among them."""
    import matplotlib.pyplot as plt

    from runner.figures import draw_curves

    ns = [4, 8, 16, 24, 32, 40, 48, 56, 128, 256, 512]
    frame = pd.DataFrame(
        [
            {"row": row, "measure": m, "N": n, "mean": 10 / n + k, "half": 0.1, "seeds": 3}
            for k, row in enumerate(["none", "minimax"])
            for m in ("worst", "average")
            for n in ns
        ]
    )
    fig = draw_curves(frame, higher_is_better=False)
    for ax in fig.axes:
        assert list(ax.get_xticks()) == ns  # every N keeps its tick
        labels = _shown_labels(ax)
        _assert_apart(labels)
        assert {"4", "8", "16", "32", "128", "256", "512"} <= {text for text, _ in labels}
    plt.close(fig)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (31.0, 44.0, None),  # no power of ten nor 1-2-5 value in range: matplotlib labelled nothing
        (4.0, 55.0, {"5", "10", "20", "50"}),
        (0.3, 9000.0, {"1", "10", "100", "1000"}),
    ],
)
def test_theory_labels_its_log_axis_whatever_the_range(lo, hi, expected):
    import matplotlib.pyplot as plt

    from runner.figures import draw_theory

    initial = np.geomspace(lo, hi, 6)
    frame = pd.DataFrame(
        {
            "row": ["none"] * 3 + ["minimax"] * 3,
            "seed": [0, 1, 2] * 2,
            "initial": initial,
            "excess": np.linspace(0.1, 0.6, 6),
            "complexity": [32.0, 64.0, 32.0, 128.0, 64.0, 64.0],
        }
    )
    fig = draw_theory(frame, {"primary_n": 32, "eps": 0.5})
    for ax in fig.axes:
        labels = _shown_labels(ax)
        _assert_apart(labels)
        values = [float(text) for text, _ in labels]
        assert len(values) >= 3 and all(min(ax.get_xlim()) <= v <= max(ax.get_xlim()) for v in values)
        if expected:
            assert expected <= {text for text, _ in labels}
    plt.close(fig)


def _history(steps, weight_a):
    return {
        "step": [float(s) for s in steps],
        "weight/a": list(weight_a),
        "weight/b": [1 - w for w in weight_a],
    }


def test_weights_are_smoothed_over_five_percent_of_the_run_and_the_axis_says_so():
    """weights.png: minimax's per-step weights zig-zag (here 0.2/0.8 every logged step); a centred moving average
    over 5% of the logged steps (5 of 100, logged every 10 steps: 50 steps) draws them near their mean 0.5."""
    import matplotlib.pyplot as plt

    from runner.figures import draw_step_figure

    zigzag = [0.2, 0.8] * 50
    runs = [_history(range(0, 1000, 10), zigzag), _history(range(0, 1000, 10), zigzag)]
    fig = draw_step_figure({"minimax": runs, "none": [_history(range(10), [0.2, 0.8] * 5)]}, "weight")
    minimax, none = sorted(fig.axes, key=lambda ax: ax.get_title() != "minimax")
    assert minimax.get_xlabel() == "pre-training step (moving average over 50 steps)"
    a = np.asarray(minimax.get_lines()[0].get_ydata())
    assert np.abs(a[2:-2] - 0.5).max() <= 0.061  # 3 of one value and 2 of the other in each window
    # a run of 10 logged steps: 5% is under one step, drawn as logged
    assert none.get_xlabel() == "pre-training step (not smoothed)"
    assert list(none.get_lines()[0].get_ydata()) == [0.2, 0.8] * 5
    plt.close(fig)


def test_figure3_rows_are_as_tall_as_their_images_and_the_legend_sits_right_under_them(tmp_path):
    """figure3_<balancer>.png: rows of another aspect ratio than square leave no blank band, and the saved picture
    has no blank band taller than the gap between two rows (the legend once sat 0.3 inch below the images)."""
    import matplotlib.image as mpimg

    from finetune.figures import GAP_IN, PANEL_IN, draw_figure3, save_grid

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 12, 16)).astype(np.uint8)
    pred = rng.integers(0, 4, size=(3, 12, 16)).astype(np.uint8)
    aspect = np.array([0.75, 1.0, 1.3], dtype=np.float32)
    fig = draw_figure3(rng.random((3, 12, 16, 3)), [("minimax", pred)], gt, ["a", "b", "c", "d"], aspect)
    fig.canvas.draw()
    renderer, dpi = fig.canvas.get_renderer(), fig.dpi
    rows = [[ax.get_window_extent(renderer) for ax in row] for row in np.asarray(fig.axes).reshape(3, 3)]
    for i, row in enumerate(rows):
        for box in row:  # the image fills its cell: PANEL_IN wide, aspect[i] as tall
            assert box.width == pytest.approx(PANEL_IN * dpi, abs=1)
            assert box.height == pytest.approx(PANEL_IN * aspect[i] * dpi, abs=1)
    for upper, lower in zip(rows, rows[1:]):
        assert upper[0].y0 - lower[0].y1 == pytest.approx(GAP_IN * dpi, abs=1)
    (legend,) = fig.legends
    gap = rows[-1][0].y0 - legend.get_window_extent(renderer).y1
    assert 0 <= gap <= 2 * GAP_IN * dpi
    path = save_grid(fig, tmp_path / "figure3_minimax.png")
    img = mpimg.imread(path)[..., :3]
    blank = (img > 0.98).all(axis=(1, 2))
    bands = [len(list(g)) for is_blank, g in itertools.groupby(blank) if is_blank]
    assert max(bands[1:-1]) <= 2 * GAP_IN * 100  # inside the picture (saved at 100 dpi)
