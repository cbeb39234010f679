import pytest

from effnet.scaling import (EFFICIENTNET_SCALING, PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA, Scaling, compound,
                            estimate_macs, round_filters, round_repeats, scale_network, scale_to_budget)
from effnet.specs import EFFICIENTNET_B0, EFFICIENTNET_LITE0


def test_round_filters_official_rule():
    # Divisor 8, nearest multiple, never below 90% of the scaled width (efficientnet_model.py).
    assert [round_filters(c, 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == \
           [32, 16, 24, 48, 88, 120, 208, 352, 1408]            # B2 widths
    assert [round_filters(c, 2.0) for c in (32, 16, 320, 1280)] == [64, 32, 640, 2560]   # B7
    assert round_filters(16, 0.5) == 8                            # floor at the divisor
    assert round_filters(36, 1.0) == 40                           # 36 -> 40 (nearest, ties up)
    assert round_filters(16, 1.25) == 24                          # 20 -> 24
    # The 90% rule: 20 * 0.55 = 11 rounds to 8 (< 9.9), so a divisor is added.
    assert round_filters(20, 0.55) == 16
    with pytest.raises(ValueError):
        round_filters(0, 1.0)


def test_round_repeats_is_ceil():
    assert [round_repeats(r, 1.4) for r in (1, 2, 2, 3, 3, 4, 1)] == [2, 3, 3, 5, 5, 6, 2]    # B3
    assert [round_repeats(r, 3.1) for r in (1, 2, 3, 4)] == [4, 7, 10, 13]                      # B7
    assert round_repeats(3, 1.0) == 3


def test_official_coefficients():
    assert EFFICIENTNET_SCALING["b0"] == Scaling(1.0, 1.0, 224, 0.2)
    assert EFFICIENTNET_SCALING["b7"] == Scaling(2.0, 3.1, 600, 0.5)
    assert EFFICIENTNET_SCALING["l2"] == Scaling(4.3, 5.3, 800, 0.5)
    assert [s.resolution for s in EFFICIENTNET_SCALING.values()] == [224, 240, 260, 300, 380, 456, 528, 600, 672, 800]


def test_compound_is_paper_equation_3():
    # alpha * beta^2 * gamma^2 ~= 2 (paper Section 3.3).
    assert PAPER_ALPHA * PAPER_BETA ** 2 * PAPER_GAMMA ** 2 == pytest.approx(1.92, abs=0.01)
    # The scaled resolution rounds to the nearest multiple of 8 pixels: 224 * 1.15 = 257.6 -> 256.
    s = compound(1)
    assert (s.depth, s.width, s.resolution) == (pytest.approx(1.2), pytest.approx(1.1), 256)
    s = compound(2.5)
    assert s.depth == pytest.approx(1.2 ** 2.5) and s.width == pytest.approx(1.1 ** 2.5)
    assert s.resolution == 8 * round(224 * 1.15 ** 2.5 / 8) == 320
    # Without a base resolution it is the multiplier gamma**phi itself.
    assert compound(1, base_resolution=None).resolution == pytest.approx(1.15)
    assert compound(0) == Scaling(1.0, 1.0, 224, 0.2)


def test_compound_scaling_roughly_doubles_macs_per_phi():
    # Unrounded, FLOPs grow by alpha * beta^2 * gamma^2 = 1.92 per unit of phi. The rounded
    # networks grow somewhat faster (ceil on repeats: a 1-block stage becomes 2 at d = 1.2),
    # measured 2.57x, 1.82x, 1.80x for phi 0->1->2->3; each step stays between 1.5x and 3x.
    macs = []
    for phi in (0, 1, 2, 3):
        s = compound(phi)
        macs.append(estimate_macs(scale_network(EFFICIENTNET_B0, s), s.resolution))
    steps = [b / a for a, b in zip(macs, macs[1:])]
    assert all(1.5 < r < 3.0 for r in steps), steps
    # Without rounding, d * w^2 * r^2 is exactly 1.92^phi (paper Eq. 3).
    s = compound(2)
    assert s.depth * s.width ** 2 * (s.resolution / 224) ** 2 == pytest.approx(1.92 ** 2, rel=0.01)


def test_scale_network_b4_widths_and_repeats():
    net = scale_network(EFFICIENTNET_B0, EFFICIENTNET_SCALING["b4"])
    assert net.stem_chs == 48 and net.head_chs == 1792
    assert [s.out_chs for s in net.stages] == [24, 32, 56, 112, 160, 272, 448]
    assert [s.repeats for s in net.stages] == [2, 4, 4, 6, 6, 8, 2]


def test_lite_keeps_stem_head_and_first_last_repeats():
    net = scale_network(EFFICIENTNET_LITE0, Scaling(1.4, 1.8, 300, 0.3))   # lite4
    assert net.stem_chs == 32 and net.head_chs == 1280
    assert net.stages[0].repeats == 1 and net.stages[-1].repeats == 1
    assert [s.repeats for s in net.stages[1:-1]] == [4, 4, 6, 6, 8]


@pytest.mark.parametrize("budget", [0.2e9, 1.0e9, 1.8e9, 4.2e9])
def test_scale_to_budget_fits_and_is_tight(budget):
    phi, s, macs = scale_to_budget(budget)
    assert macs <= budget
    # The network one bisection step larger would not fit; so the result uses the budget well.
    assert macs > 0.85 * budget
    assert s == compound(phi)
    assert macs == estimate_macs(scale_network(EFFICIENTNET_B0, s), s.resolution)
    # Above B0's 0.386 G the coefficient is positive, below it negative.
    assert (phi > 0) == (budget > 385814752)


def test_scale_to_budget_is_monotone_in_the_budget():
    phis = [scale_to_budget(b)[0] for b in (0.3e9, 0.7e9, 1.8e9, 9.9e9)]
    assert phis == sorted(phis) and len(set(phis)) == 4


def test_scale_to_budget_rejects_tiny_budget():
    with pytest.raises(ValueError, match="below the smallest"):
        scale_to_budget(1e5)
