"""bf16 emulation (megzoo.quantization.bf16): the rounding bit for bit, BatchNorm folding, and models whose
convolution and matrix-multiply inputs and weights are rounded to bf16.

Values are compared as bit patterns where zeros or subnormals are involved: importing MegEngine turns on
flush-to-zero and denormals-are-zero for the process, so a float comparison would call a subnormal 0.
The hand-set networks use values whose float32 products and sums are exact in any order, so their
outputs are the same numbers on every CPU (AVX2 or AVX-512 kernels alike).
"""
import megengine
import megengine.functional as F
import megengine.module as M
import numpy as np
import pytest

import megzoo
from megzoo.quantization import prepare_qat
from megzoo.quantization.bf16 import emulate_bf16, fold_batch_norms, round_to_bf16
from test_quantization import _bottleneck_net, _rng_batch, _run, _trained_bn


def _bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint32).view(np.float32)


def _hex(x: np.ndarray) -> list:
    return [f"{int(b):#010x}" for b in np.asarray(x, dtype=np.float32).reshape(-1).view(np.uint32)]


# --- round_to_bf16 ------------------------------------------------------------------------------------
def test_ties_go_to_the_even_neighbour():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), -(1 + 3 * 2**-8), 2 + 2**-7, 0.5 + 3 * 2**-9],
                 np.float32)
    # 1 + 2**-8 lies halfway between 1 (0x3F80, even) and 1 + 2**-7 (0x3F81, odd): down to 1;
    # 1 + 3 * 2**-8 lies halfway between 1 + 2**-7 (odd) and 1 + 2**-6 (0x3F82, even): up
    assert round_to_bf16(x).tolist() == [1.0, 1 + 2**-6, -1.0, -(1 + 2**-6), 2.0, 0.5 + 2**-7]


def test_off_tie_values_go_to_the_nearest():
    x = np.array([1 + 2**-8 + 2**-23, 1 + 2**-8 - 2**-23, 1 + 2**-7, 3.0, np.pi], np.float32)
    assert round_to_bf16(x).tolist() == [1 + 2**-7, 1.0, 1 + 2**-7, 3.0, 3.140625]


def test_agrees_with_rounding_the_significand_in_float64():
    """Against an independent rule: 8 significant bits by frexp and rint (ties to even), random
    significands, with a third of them made exact ties."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0x00800000, 0x7F000000, 30000, dtype=np.uint32) | rng.integers(0, 2, 30000,
                                                                                        dtype=np.uint32) << 31
    bits[::3] = (bits[::3] & 0xFFFF0000) | 0x8000
    x = bits.view(np.float32)
    mantissa, exponent = np.frexp(x.astype(np.float64))
    expected = np.ldexp(np.rint(mantissa * 256) / 256, exponent).astype(np.float32)
    assert np.array_equal(round_to_bf16(x).view(np.uint32), expected.view(np.uint32))


def test_largest_values_round_to_bf16_max_or_inf_never_nan():
    x = _bits([0x7F7F7FFF, 0x7F7F8000, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F0000])
    assert _hex(round_to_bf16(x)) == ["0x7f7f0000", "0x7f800000", "0x7f800000", "0xff800000", "0x7f7f0000"]
    assert round_to_bf16(np.float32(3.39e38)) == np.float32(3.3895313892515355e38)  # bf16's largest


def test_nan_stays_nan_and_inf_stays_inf():
    x = np.concatenate([_bits([0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0xFF810000]), np.float32([np.inf, -np.inf])])
    # a NaN whose payload is only in the low half (0x7F800001) would become inf by the plain add;
    # 0xFFFFFFFF would wrap around to 0: both stay NaN, quiet, with their sign
    assert _hex(round_to_bf16(x)) == ["0x7fc00000", "0x7fc00000", "0xffff0000", "0xffc10000", "0x7f800000",
                                      "0xff800000"]


def test_zeros_keep_their_sign_and_subnormals_flush_like_vcvtneps2bf16():
    x = _bits([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00400000, 0x00800000])
    assert _hex(round_to_bf16(x)) == ["0x00000000", "0x80000000", "0x00000000", "0x80000000", "0x00000000",
                                      "0x00800000"]


def test_subnormals_round_to_bf16_subnormals_when_kept():
    x = _bits([0x00008000, 0x00008001, 0x00018000, 0x807FFFFF, 0x00000001])
    # steps of 0x10000 (2**-133): 0x8000 is a tie -> 0 (even), 0x18000 a tie -> 0x20000 (even);
    # 0x7FFFFF rounds up into the smallest normal number
    assert _hex(round_to_bf16(x, flush_subnormals=False)) == ["0x00000000", "0x00010000", "0x00020000",
                                                              "0x80800000", "0x00000000"]


def test_shape_dtype_and_input_kept():
    x = np.full((2, 3), 1 + 2**-8, np.float32)
    out = round_to_bf16(x)
    assert out.dtype == np.float32 and out.shape == (2, 3) and np.all(out == 1.0)
    assert np.all(x == np.float32(1 + 2**-8))
    assert round_to_bf16(np.float32(1 + 3 * 2**-8)).shape == ()


def test_float64_is_refused():
    with pytest.raises(TypeError) as info:
        round_to_bf16(np.ones(2))
    assert str(info.value) == ("round_to_bf16 rounds float32 values (what a bf16 runtime reads), got float64: "
                               "pass x.astype(np.float32)")


# --- emulated models ------------------------------------------------------------------------------------
class _Tiny(M.Module):
    """(1, 1, 1, 2) -> a 1x1 conv to 2 channels -> flatten -> Linear(4, 1)."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(1, 2, 1)
        self.fc = M.Linear(4, 1)

    def forward(self, x):
        return self.fc(F.flatten(self.conv(x), 1))


def _tiny() -> _Tiny:
    net = _Tiny()
    net.conv.weight = megengine.Parameter(np.float32([1 + 2**-8, -(0.5 + 3 * 2**-9)]).reshape(2, 1, 1, 1))
    net.conv.bias = megengine.Parameter(np.float32([0.25, 4]).reshape(1, 2, 1, 1))
    net.fc.weight = megengine.Parameter(np.float32([[1, -1, 2, 0.5]]))
    net.fc.bias = megengine.Parameter(np.zeros(1, np.float32))
    net.eval()
    return net


TINY_INPUT = np.float32([1 + 3 * 2**-8, 2 + 2**-7]).reshape(1, 1, 1, 2)


def test_tiny_net_differs_from_float32_by_exactly_the_bf16_rounding():
    net = _tiny()
    assert _run(net, TINY_INPUT)[0, 0] == 978925 / 2**17  # 7.468605041503906, exact in float32
    # bf16: input (1 + 2**-6, 2), conv weights (1, -(0.5 + 2**-7)); biases stay float32:
    # conv out (1.265625, 2.25 | 3.5 - 2**-6 - 2**-13, 3 - 2**-6), rounded for fc: 3.5 - 2**-13 -> 3.484375;
    # fc: 1.265625 - 2.25 + 2 * 3.484375 + 0.5 * 2.984375
    emulated = emulate_bf16(net)
    assert _run(emulated, TINY_INPUT)[0, 0] == 7.4765625
    assert 7.4765625 - 978925 / 2**17 == 1043 / 2**17
    assert emulated.conv.weight.numpy().reshape(-1).tolist() == [1.0, -(0.5 + 2**-7)]
    assert emulated.conv.bias.numpy().reshape(-1).tolist() == [0.25, 4.0]


def test_the_given_model_is_left_unchanged():
    net = _tiny()
    net.train()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    emulated = emulate_bf16(net)
    assert emulated is not net and net.training and not emulated.training
    assert all(np.array_equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_pre_hooks for m in net.modules())
    net.eval()
    assert _run(net, TINY_INPUT)[0, 0] == 978925 / 2**17


def test_training_mode_is_refused():
    emulated = emulate_bf16(_tiny())
    emulated.train()
    with pytest.raises(RuntimeError) as info:
        _run(emulated, TINY_INPUT)
    assert str(info.value) == ("Conv2d of a bf16-emulated model called in training mode: the emulation is for "
                               "evaluation (its rounding has no gradient); call .eval() on it")


def _conv_bn(track_running_stats=True) -> M.Module:
    """A ConvBn2d whose BatchNorm scales by exactly 1.5: gamma 3 / sqrt(var + eps), var + eps = 4."""
    fused = M.ConvBn2d(1, 1, 1, bias=False, eps=2**-10, track_running_stats=track_running_stats)
    fused.conv.weight = megengine.Parameter(np.float32([1 + 2**-8]).reshape(1, 1, 1, 1))
    fused.bn.weight = megengine.Parameter(np.float32([3]).reshape(1, 1, 1, 1))
    fused.bn.bias = megengine.Parameter(np.float32([0.125]).reshape(1, 1, 1, 1))
    if track_running_stats:
        fused.bn.running_var = megengine.Tensor(np.float32([4 - 2**-10]).reshape(1, 1, 1, 1))
    model = M.Sequential(fused)
    model.eval()
    return model


def test_folding_changes_what_is_rounded():
    """Folded, the weight rounded is 1.5 * (1 + 2**-8) = 1.505859375, nearer 1.5078125 than 1.5; unfolded
    it is 1 + 2**-8, a tie -> 1, and the BatchNorm then scales by 1.5 in float32."""
    model, x = _conv_bn(), np.float32([[[[1 + 2**-7]]]])
    assert _run(model, x).item() == 1.5 * (1 + 2**-8) * (1 + 2**-7) + 0.125
    folded = fold_batch_norms(model)
    assert isinstance(folded[0].bn, M.Identity) and folded[0].conv.weight.numpy().item() == 1.5 * (1 + 2**-8)
    assert _run(folded, x).item() == 1.5 * (1 + 2**-8) * (1 + 2**-7) + 0.125
    assert _run(emulate_bf16(model), x).item() == 1.5078125 * (1 + 2**-7) + 0.125 == 1.64459228515625
    assert _run(emulate_bf16(model, fold_bn=False), x).item() == 1.5 * (1 + 2**-7) + 0.125
    assert isinstance(model[0].bn, M.BatchNorm2d)  # the given model keeps its BatchNorm


def test_batch_statistics_are_not_folded():
    with pytest.raises(ValueError) as info:
        fold_batch_norms(_conv_bn(track_running_stats=False))
    assert str(info.value) == ("a BatchNorm without running statistics (track_running_stats=False) normalises by "
                               "each batch and cannot be folded: emulate bf16 with fold_bn=False")


@pytest.fixture(scope="module")
def r18():
    np.random.seed(0)
    megengine.random.seed(0)
    return _trained_bn(megzoo.resnet18(num_classes=6))


@pytest.mark.parametrize("grouped", [False, True], ids=["resnet18", "bottleneck-groups-dilated"])
def test_a_megzoo_model_is_folded_through_its_quantizable_form(r18, grouped):
    model = _trained_bn(_bottleneck_net()) if grouped else r18
    x = _rng_batch(2)
    folded = fold_batch_norms(model)
    assert not any(isinstance(m, M.BatchNorm2d) for m in folded.modules())
    reference = _run(model, x)
    assert np.abs(_run(folded, x) - reference).max() < 1e-5 * np.abs(reference).max()


def test_a_megzoo_model_emulated_rounds_every_conv_and_linear(r18):
    x = _rng_batch(2)
    reference = _run(r18, x)
    emulated = emulate_bf16(r18)
    layers = [m for m in emulated.modules() if isinstance(m, (M.Conv2d, M.Linear))]
    assert len(layers) == 21  # 20 convolutions and the classifier
    assert all(not (m.weight.numpy().view(np.uint32) & 0xFFFF).any() and m._forward_pre_hooks for m in layers)
    error = np.abs(_run(emulated, x) - reference).max() / np.abs(reference).max()
    assert 2**-14 < error < 2**-5  # bf16's half step is 2**-9 relative; 21 layers of it, no more
    assert np.array_equal(_run(r18, x), reference)


def test_a_model_without_batch_norm_is_copied_and_a_backbone_refused():
    gn = megzoo.resnet18(num_classes=3, norm_layer="gn")
    gn.eval()
    folded = fold_batch_norms(gn)
    assert folded is not gn and sum(isinstance(m, M.GroupNorm) for m in folded.modules()) == 20
    x = _rng_batch(1)
    assert np.array_equal(_run(folded, x), _run(gn, x))
    with pytest.raises(ValueError) as info:
        fold_batch_norms(megzoo.resnet18(features_only=True))
    assert str(info.value) == ("resnet18 is a features_only backbone, whose BatchNorms megzoo folds only in the "
                               "classifier's form: build it without features_only, or emulate bf16 with fold_bn=False")


def test_what_is_not_a_float_module_is_refused(r18):
    with pytest.raises(TypeError) as info:
        emulate_bf16(lambda x: x)
    assert str(info.value) == "bf16 emulation takes a MegEngine module, got function"
    with pytest.raises(ValueError) as info:
        emulate_bf16(prepare_qat(r18), fold_bn=False)
    assert str(info.value) == ("the model is in qat form; bf16 emulation starts from the float32 model (the one "
                               "quantized or fine-tuned with QAT)")
