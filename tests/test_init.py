"""MSRA initialisation (megzoo.init): the distributions, on layers large enough for tight statistics,
and the helpers on module trees megzoo does not know."""
import math

import megengine as mge
import megengine.module as M
import numpy as np
import pytest
from megengine import Parameter
from megengine.module import init as mge_init

import megzoo
from megzoo.init import init_conv_, init_linear_, init_norm_, msra_init_, zero_init_residual_


@pytest.fixture(autouse=True)
def seeded():
    mge.random.seed(20240601)


def fill(module: M.Module, value: float) -> None:
    for p in module.parameters():
        mge_init.fill_(p, value)


def assert_msra_normal(weight: np.ndarray, fan_out: int) -> None:
    std = math.sqrt(2.0 / fan_out)
    assert abs(weight.std() / std - 1) < 0.03
    assert abs(weight.mean()) < 0.01 * std
    assert abs(np.mean(np.abs(weight) < std) - 0.6827) < 0.01  # normal, not uniform (0.577) at this std


def assert_uniform(values: np.ndarray, bound: float, std_tolerance: float) -> None:
    assert np.abs(values).max() <= bound
    assert values.max() > 0.95 * bound and values.min() < -0.95 * bound  # spread over the interval
    assert abs(values.std() / (bound / math.sqrt(3)) - 1) < std_tolerance


def test_conv_weight_and_bias():
    conv = M.Conv2d(256, 512, 3)  # 1.18M weights
    fill(conv, 7.0)
    assert init_conv_(conv) is conv
    assert_msra_normal(conv.weight.numpy(), fan_out=512 * 9)
    bias = conv.bias.numpy()
    assert bias.shape == (1, 512, 1, 1)
    assert_uniform(bias, bound=1 / math.sqrt(256 * 9), std_tolerance=0.1)


def test_grouped_conv_uses_megengine_fan_out():
    """Weight (G, O/G, I/G, kh, kw): fan_out = O/G * kh * kw = 144 (PyTorch would use O * kh * kw =
    4608, a 5.7x smaller std)."""
    conv = M.Conv2d(256, 512, 3, groups=32)
    init_conv_(conv)
    weight = conv.weight.numpy()
    assert weight.shape == (32, 16, 8, 3, 3)
    assert_msra_normal(weight, fan_out=16 * 9)
    assert_uniform(conv.bias.numpy(), bound=1 / math.sqrt(8 * 9), std_tolerance=0.1)


def test_linear():
    """msra_uniform_ with a = sqrt(5): bound sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in)."""
    linear = M.Linear(2048, 1000)
    fill(linear, 7.0)
    assert init_linear_(linear) is linear
    bound = 1 / math.sqrt(2048)
    weight = linear.weight.numpy()
    assert_uniform(weight, bound, std_tolerance=0.01)
    assert abs(weight.mean()) < 0.01 * bound
    assert_uniform(linear.bias.numpy(), bound, std_tolerance=0.1)


@pytest.mark.parametrize("norm", [M.BatchNorm2d(64), M.BatchNorm1d(64), M.GroupNorm(8, 64), M.LayerNorm(64),
                                  M.InstanceNorm(64)])
def test_norm_weight_one_bias_zero(norm):
    fill(norm, 7.0)
    stats = {k: v.copy() for k, v in norm.state_dict().items() if "running" in k}
    assert init_norm_(norm) is norm
    assert (norm.weight.numpy() == 1).all() and (norm.bias.numpy() == 0).all()
    assert all(np.array_equal(norm.state_dict()[k], v) for k, v in stats.items())  # statistics untouched


def test_norm_without_affine_is_left_alone():
    norm = M.GroupNorm(4, 16, affine=False)
    assert init_norm_(norm) is norm and norm.weight is None


class Head(M.Module):
    def __init__(self):
        super().__init__()
        self.convs = [M.Conv2d(16, 32, 3, padding=1), M.Conv2d(32, 64, 1, groups=2)]  # a plain list
        self.norm = M.GroupNorm(4, 64)
        self.fc = M.Linear(64, 5)
        self.scale = Parameter(np.ones(3, np.float32))

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.fc(self.norm(x).mean(axis=(2, 3))) * self.scale[0]


class Net(M.Module):
    def __init__(self):
        super().__init__()
        self.stem = M.Sequential(M.Conv2d(3, 16, 3, bias=False), M.BatchNorm2d(16), M.ReLU())
        self.head = Head()

    def forward(self, x):
        return self.head(self.stem(x))


def test_msra_init_on_a_user_module_tree():
    net = Net()
    fill(net, 7.0)
    assert msra_init_(net) is net
    convs = [net.stem[0], *net.head.convs]
    for conv in convs:
        weight = conv.weight.numpy()
        fan_out = weight.shape[-4] * weight.shape[-2] * weight.shape[-1]  # O (per group) * kh * kw
        assert abs(weight.std() / math.sqrt(2 / fan_out) - 1) < 0.2 and abs(weight).max() < 7
    for conv in net.head.convs:
        fan_in = int(np.prod(conv.weight.shape[-3:]))
        assert np.abs(conv.bias.numpy()).max() <= 1 / math.sqrt(fan_in)
    for norm in (net.stem[1], net.head.norm):
        assert (norm.weight.numpy() == 1).all() and (norm.bias.numpy() == 0).all()
    assert np.abs(net.head.fc.weight.numpy()).max() <= 1 / math.sqrt(64)
    assert np.abs(net.head.fc.bias.numpy()).max() <= 1 / math.sqrt(64)
    assert (net.head.scale.numpy() == 7).all()  # not a layer msra_init_ knows: untouched
    assert net(mge.tensor(np.ones((1, 3, 8, 8), np.float32))).shape == (1, 5)


class Block(M.Module):
    def __init__(self, channels: int, affine: bool = True):
        super().__init__()
        self.conv = M.Conv2d(channels, channels, 3, padding=1)
        self.bn_a = M.BatchNorm2d(channels)
        self.bn_last = M.BatchNorm2d(channels, affine=affine)

    def forward(self, x):
        return x + self.bn_last(self.conv(self.bn_a(x)))


def test_zero_init_residual_with_a_custom_attribute():
    blocks = [Block(8), Block(8), Block(16), Block(16, affine=False)]
    net = M.Sequential(*blocks, M.BatchNorm2d(16))
    assert zero_init_residual_(net) == 0  # no block exposes the default "residual_norm"
    assert zero_init_residual_(net, attr="bn_last") == 3  # the non-affine one has nothing to zero
    for block in blocks[:3]:
        assert not block.bn_last.weight.numpy().any()
        assert (block.bn_last.bias.numpy() == 0).all() and (block.bn_a.weight.numpy() == 1).all()
    assert (net[4].weight.numpy() == 1).all()
    x = mge.tensor(np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32))
    net.eval()
    np.testing.assert_array_equal(blocks[0](x).numpy(), x.numpy())  # residual branch is exactly 0


def test_builders_use_msra_init():
    model = megzoo.resnet18()
    assert_msra_normal(model.layer4[1].conv2.weight.numpy(), fan_out=512 * 9)  # 2.4M weights
    assert_uniform(model.fc.weight.numpy(), 1 / math.sqrt(512), std_tolerance=0.01)
    assert all((m.weight.numpy() == 1).all() and (m.bias.numpy() == 0).all()
               for m in model.modules() if isinstance(m, M.BatchNorm2d))
    grouped = megzoo.models.ResNet("bottleneck", (1, 1, 1, 1), groups=32, width_per_group=8)
    assert_msra_normal(grouped.layer4[0].conv2.weight.numpy(), fan_out=(2048 // 32) * 9)
