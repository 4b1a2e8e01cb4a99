"""Evaluation statistics against hand-computed values."""

import math
import xml.etree.ElementTree as ET

import pytest

from palate.eval.plots import histogram_svg, line_svg, reliability_svg, scatter_svg
from palate.eval.stats import accuracy_ci, bootstrap_ci, calibration, grouped_accuracy, histogram, pearson, spearman


def test_calibration_hand_value():
    # 2 bins. Bin [0, .5): p = .1, .3 → mean .2; outcomes 0, 1 → freq .5; |.2 − .5| = .3, weight 2/4
    # Bin [.5, 1]: p = .6, .8 → mean .7; outcomes 1, 1 → freq 1; |.7 − 1| = .3, weight 2/4
    # ECE = .5·.3 + .5·.3 = .3; Brier = (.01 + .49 + .16 + .04) / 4 = .175
    got = calibration([0.1, 0.3, 0.6, 0.8], [0, 1, 1, 1], n_bins=2)
    assert got["ece"] == pytest.approx(0.3)
    assert got["brier"] == pytest.approx(0.175)
    assert [b["n"] for b in got["bins"]] == [2, 2]
    assert got["bins"][0]["mean_prob"] == pytest.approx(0.2) and got["bins"][1]["frequency"] == pytest.approx(1.0)


def test_calibration_keeps_empty_bins_and_soft_labels():
    got = calibration([0.95, 0.95], [0.5, 1.0], n_bins=4)
    assert [b["n"] for b in got["bins"]] == [0, 0, 0, 2]
    assert got["bins"][0]["mean_prob"] is None
    assert got["ece"] == pytest.approx(abs(0.95 - 0.75))
    with pytest.raises(ValueError):
        calibration([], [])


def test_pearson_and_spearman_hand_values():
    # x = 1,2,3, y = 1,3,2: deviations (−1,0,1), (−1,1,0): r = 1 / √(2·2) = 0.5
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # ties: y = 10, 20, 20, 30 → ranks 1, 2.5, 2.5, 4; x ranks 1..4
    # deviations x: −1.5, −.5, .5, 1.5; y: −1.5, 0, 0, 1.5 → Σ = 4.5; Σx² = 5, Σy² = 4.5 → ρ = 4.5/√22.5 = 0.948683
    assert spearman([1, 2, 3, 4], [10, 20, 20, 30]) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_bootstrap_ci_properties():
    correct = [1] * 80 + [0] * 20
    point, low, high = bootstrap_ci(correct, seed=0)
    assert point == 0.8 and 0.70 <= low <= 0.74 and 0.86 <= high <= 0.90
    assert bootstrap_ci(correct, seed=0) == (point, low, high)  # deterministic
    _, low_big, high_big = bootstrap_ci([1] * 800 + [0] * 200, seed=0)
    assert high_big - low_big < (high - low) / 2  # narrows ~1/√n
    with pytest.raises(ValueError):
        bootstrap_ci([])
    # weights: (1·1 + 0·3) / 4 = 0.25
    assert accuracy_ci([1, 0], weights=[1, 3])["accuracy"] == pytest.approx(0.25)


def test_grouped_accuracy_splits_by_group():
    got = grouped_accuracy([1, 0, 1, 1], ["b", "a", "b", "a"])
    assert list(got) == ["a", "b"]
    assert got["a"]["accuracy"] == 0.5 and got["a"]["n"] == 2 and got["b"]["accuracy"] == 1.0


def test_histogram_counts():
    got = histogram([0, 0.1, 0.6, 1.0], bins=2, range=(0, 1))
    assert got["counts"] == [2, 2] and got["edges"] == [0, 0.5, 1.0]
    assert histogram([], bins=3) == {"edges": [], "counts": []}


def parse(svg):
    return ET.fromstring(svg)


NS = "{http://www.w3.org/2000/svg}"


def test_plots_are_valid_svg_with_their_series():
    bins = calibration([0.1, 0.3, 0.6, 0.8, 0.85], [0, 1, 1, 1, 0], n_bins=5)["bins"]
    root = parse(reliability_svg(bins, title="Calibration <test>"))
    assert root.find(f"{NS}title").text == "Calibration <test>"
    assert len(root.findall(f"{NS}circle")) == sum(1 for b in bins if b["n"])
    hist = parse(histogram_svg({"chosen": [1, 2, 3], "rejected": [0, 1]}, title="Rewards"))
    assert len(hist.findall(f"{NS}g")) == 2 and len(hist.findall(f".//{NS}rect[@class='legend']")) == 2
    lines = parse(line_svg({"reward": [(0, 1), (1, float("nan")), (2, 3), (3, 4)]}, title="curve"))
    assert len(lines.findall(f"{NS}polyline")) == 2  # the NaN breaks the line
    scat = parse(scatter_svg({"a": [(1, 2), (3, 4)]}, title="s"))
    assert len(scat.findall(f".//{NS}circle")) == 2


@pytest.mark.parametrize("svg", [
    reliability_svg([{"low": 0, "high": 1, "n": 0, "mean_prob": None, "frequency": None}], title="t"),
    histogram_svg({"a": []}, title="t"),
    histogram_svg({"a": [2.0, 2.0, 2.0]}, title="t"),
    line_svg({}, title="t"),
    scatter_svg({"a": [(1, 1)]}, title="t"),
])
def test_degenerate_inputs_draw_valid_svg(svg):
    root = parse(svg)
    assert root.tag == f"{NS}svg"
    if not root.findall(f".//{NS}circle") and not root.findall(f".//{NS}g"):
        assert "no data" in svg
