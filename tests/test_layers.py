import pytest
import torch
import torch.nn.functional as F

from effnet.layers import Conv2dSame, ConvNormAct, DropPath, SqueezeExcite, create_conv2d, same_padding


def tf_same_pad_total(size: int, kernel: int, stride: int) -> int:
    """Total SAME padding as TensorFlow's documentation states it (tf.nn.convolution)."""
    if size % stride == 0:
        return max(kernel - stride, 0)
    return max(kernel - (size % stride), 0)


@pytest.mark.parametrize("size", [7, 8, 97, 112, 131, 224, 225])
@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 2), (3, 1), (5, 1)])
def test_same_padding_matches_tensorflow_rule(size, kernel, stride):
    total = tf_same_pad_total(size, kernel, stride)
    assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)


@pytest.mark.parametrize("hw", [(224, 224), (225, 225), (97, 131), (8, 9), (1, 1)])
@pytest.mark.parametrize("kernel, stride, groups", [(3, 2, 1), (5, 2, 4), (3, 1, 1), (5, 1, 4)])
def test_same_conv_equals_explicit_pad_then_valid_conv(hw, kernel, stride, groups):
    torch.manual_seed(0)
    conv = create_conv2d(4, 8, kernel, stride, groups=groups, padding="same")
    x = torch.randn(2, 4, *hw)
    ph, pw = tf_same_pad_total(hw[0], kernel, stride), tf_same_pad_total(hw[1], kernel, stride)
    ref = F.conv2d(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]), conv.weight, None, stride, 0, 1, groups)
    out = conv(x)
    assert out.shape == ref.shape == (2, 8, -(-hw[0] // stride), -(-hw[1] // stride))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_same_stride2_even_pads_only_after():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 4, 4)
    # SAME on 4x4, k3 s2: pad (0, 1). The first output sees a full 3x3 window (9),
    # the last row/column window hangs over the zero padding.
    out = conv(x)
    assert out.squeeze().tolist() == [[9.0, 6.0], [6.0, 4.0]]
    # Symmetric padding would give a top-left window over the padding instead.
    sym = torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    assert sym.squeeze().tolist() == [[4.0, 6.0], [6.0, 9.0]]


def test_create_conv2d_symmetric_and_errors():
    conv = create_conv2d(3, 8, 5, 2, padding="symmetric")
    assert type(conv) is torch.nn.Conv2d and conv.padding == (2, 2) and conv.bias is None
    assert type(create_conv2d(3, 8, 3, 1, padding="same")) is torch.nn.Conv2d    # stride 1: static
    assert isinstance(create_conv2d(3, 8, 3, 2, padding="same"), Conv2dSame)
    with pytest.raises(ValueError, match="padding must be one of"):
        create_conv2d(3, 8, 3, padding="valid")


def test_drop_path_identity_in_eval_and_drops_whole_samples_in_train():
    torch.manual_seed(0)
    dp = DropPath(0.3)
    x = torch.randn(4000, 8, 3, 3) + 5.0   # no sample is all zeros by chance
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    flat = y.flatten(1)
    dropped = (flat == 0).all(dim=1)
    kept = ~dropped
    # Each sample is either entirely zero or the input scaled by 1 / (1 - p).
    torch.testing.assert_close(flat[kept], x.flatten(1)[kept] / 0.7)
    assert (flat[dropped] == 0).all()
    assert 0.27 < dropped.float().mean().item() < 0.33
    assert torch.equal(DropPath(0.0).train()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_squeeze_excite_gates_channels_in_0_1():
    torch.manual_seed(0)
    se = SqueezeExcite(16, 4)
    x = torch.rand(2, 16, 5, 5) + 0.1
    y = se(x)
    gate = y / x
    assert y.shape == x.shape
    assert ((gate > 0) & (gate < 1)).all()
    # One gate per (sample, channel): constant over space.
    torch.testing.assert_close(gate, gate[:, :, :1, :1].expand_as(gate))
    assert sum(p.numel() for p in se.parameters()) == 16 * 4 + 4 + 4 * 16 + 16


def test_conv_norm_act_shapes_and_act():
    m = ConvNormAct(3, 8, 3, 2, act="relu6").eval()
    y = m(torch.randn(1, 3, 9, 10) * 100)
    assert y.shape == (1, 8, 5, 5) and y.max() <= 6.0 and y.min() >= 0.0
    with pytest.raises(ValueError, match="unknown activation"):
        ConvNormAct(3, 8, act="gelu6")
