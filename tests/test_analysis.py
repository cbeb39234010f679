import pytest

import effnet
from effnet.analysis import count_macs, model_stats
from effnet.scaling import estimate_macs

# Paper Table 2, FLOPs column (multiply-adds), billions.
PAPER_MACS = {"b0": 0.39, "b1": 0.70, "b2": 1.0, "b3": 1.8, "b4": 4.2, "b5": 9.9, "b6": 19, "b7": 37}


@pytest.mark.parametrize("variant", list(PAPER_MACS))
def test_macs_within_5_percent_of_paper_table_2(variant):
    s = model_stats(f"efficientnet_{variant}")
    assert s["input_size"] == effnet.get_config(f"efficientnet_{variant}").scaling.resolution
    assert s["macs"] / 1e9 == pytest.approx(PAPER_MACS[variant], rel=0.05)


def test_b0_macs_is_0_386_g():
    assert round(model_stats("efficientnet_b0")["macs"] / 1e9, 3) == 0.386


@pytest.mark.parametrize("name", effnet.list_models("efficientnet_*"))
def test_analytic_macs_agree_with_flop_counter(name):
    cfg = effnet.get_config(name)
    assert estimate_macs(cfg.network, cfg.input_size) == model_stats(name)["macs"]


def test_count_macs_on_a_real_model_non_square_and_batch():
    model = effnet.create_model("efficientnet_lite0", in_chans=1, num_classes=10)
    macs = count_macs(model, (97, 131), batch_size=2)
    assert macs == 2 * estimate_macs(effnet.get_config("efficientnet_lite0").network, (97, 131), 10, in_chans=1)
    assert model.training          # restored after counting
