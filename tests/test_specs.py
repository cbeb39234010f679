import pytest

from effnet.specs import EFFICIENTNET_B0, EFFICIENTNET_LITE0, BlockType, StageSpec, mbconv


def test_b0_table_is_paper_table_1():
    # Paper Table 1: (operator expansion, kernel, stride, channels, layers) for stages 2-8.
    table = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    got = [(s.expand_ratio, s.kernel, s.stride, s.out_chs, s.repeats) for s in EFFICIENTNET_B0.stages]
    assert got == table
    assert EFFICIENTNET_B0.stem_chs == 32 and EFFICIENTNET_B0.stem_kernel == 3 and EFFICIENTNET_B0.stem_stride == 2
    assert EFFICIENTNET_B0.head_chs == 1280
    assert all(s.block is BlockType.MBCONV and s.se_ratio == 0.25 for s in EFFICIENTNET_B0.stages)
    assert EFFICIENTNET_B0.act == "silu"
    assert EFFICIENTNET_B0.num_blocks == 16 and EFFICIENTNET_B0.stride == 32


def test_lite_is_b0_without_se_with_relu6_and_fixed_stem_head():
    assert [(s.expand_ratio, s.kernel, s.stride, s.out_chs, s.repeats) for s in EFFICIENTNET_LITE0.stages] == \
           [(s.expand_ratio, s.kernel, s.stride, s.out_chs, s.repeats) for s in EFFICIENTNET_B0.stages]
    assert all(s.se_ratio == 0 for s in EFFICIENTNET_LITE0.stages)
    assert EFFICIENTNET_LITE0.act == "relu6"
    assert not EFFICIENTNET_LITE0.scale_stem_head and not EFFICIENTNET_LITE0.scale_first_last_repeats


@pytest.mark.parametrize("kwargs, message", [
    (dict(kernel=4), "kernel"), (dict(stride=3), "stride"), (dict(expand_ratio=0), "expand_ratio"),
    (dict(se_ratio=1.5), "se_ratio"), (dict(repeats=0), "repeats"),
])
def test_stage_spec_rejects_bad_values(kwargs, message):
    args = dict(expand_ratio=6, kernel=3, stride=1, out_chs=16, repeats=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        StageSpec(BlockType.MBCONV, **args)
    assert mbconv(6, 3, 1, 16, 1).se_ratio == 0.25
