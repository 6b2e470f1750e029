"""The graph converter (megzoo.inference.graph_onnx): any MegEngine module traced and converted
operator by operator, run by ONNX Runtime at two batch sizes against eager MegEngine.

A gallery of user-style modules, one per operator group the coming families need (SE block,
inverted residual with ReLU6, channel shuffle, GELU/LayerNorm/attention, upsample-and-concat neck,
softmax head), and each refusal with its message.
"""
import numpy as np
import pytest

import megengine
import megengine.functional as F
import megengine.module as M

from megzoo.inference.graph_onnx import UnsupportedOperatorError, module_to_onnx

TOLERANCE = 1e-4  # of the output scale, as the export's parity check


def _run_both(model, shape, **options):
    """max |onnx - eager| / max |eager| over the outputs at batch 1 and 3, and the ONNX op types."""
    import onnxruntime as ort

    model.eval()
    proto = module_to_onnx(model, shape, **options)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 3):
        x = np.random.RandomState(n).randn(n, *shape[1:]).astype(np.float32)
        eager = model(megengine.tensor(x))
        eager = [t.numpy() for t in (eager if isinstance(eager, (list, tuple)) else [eager])]
        got = session.run(None, {"data": x})
        assert [g.shape for g in got] == [e.shape for e in eager]
        worst = max([worst] + [float(np.abs(g - e).max() / np.abs(e).max()) for g, e in zip(got, eager)])
    return worst, sorted({node.op_type for node in proto.graph.node})


class SqueezeExcite(M.Module):
    def __init__(self, channels=16):
        super().__init__()
        self.conv = M.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = M.BatchNorm2d(channels)
        self.reduce = M.Conv2d(channels, 4, 1)
        self.expand = M.Conv2d(4, channels, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        gate = F.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, (1, 1))))))
        return x * gate


class InvertedResidual(M.Module):
    def __init__(self):
        super().__init__()
        self.expand = M.Sequential(M.Conv2d(3, 12, 1, bias=False), M.BatchNorm2d(12))
        self.depthwise = M.Sequential(M.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12, bias=False),
                                      M.BatchNorm2d(12))
        self.project = M.Sequential(M.Conv2d(12, 3, 1, bias=False), M.BatchNorm2d(3))

    def forward(self, x):
        y = F.relu6(self.expand(x))
        y = F.relu6(self.depthwise(y))
        return x + self.project(y)


class ChannelShuffle(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 8, 3, stride=2, padding=1)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.reshape(n, 2, c // 2, h, w).transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)
        left, right = x[:, : c // 2], x[:, c // 2:]
        return F.concat([F.hswish(left), F.hsigmoid(right) * F.silu(right)], axis=1)


class Attention(M.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.patch = M.Conv2d(3, dim, 4, stride=4)
        self.norm = M.LayerNorm(dim)
        self.qkv = M.Linear(dim, 3 * dim)
        self.mlp = M.Linear(dim, dim)
        self.scale = dim ** -0.5

    def forward(self, x):
        x = self.patch(x)
        n, c = x.shape[0], x.shape[1]
        t = self.norm(x.reshape(n, c, -1).transpose(0, 2, 1))
        q, k, v = F.split(self.qkv(t), 3, axis=2)
        attn = F.softmax(F.matmul(q, k.transpose(0, 2, 1)) * self.scale, axis=-1)
        t = t + F.matmul(attn, v)
        t = t + F.gelu(self.mlp(t))
        return t.mean(axis=1)


class Neck(M.Module):
    def __init__(self):
        super().__init__()
        self.down = M.Conv2d(3, 6, 3, stride=2, padding=1)
        self.pool = M.AvgPool2d(2, 2)

    def forward(self, x):
        low = F.relu(self.down(x))
        up = F.nn.interpolate(self.pool(low), scale_factor=2.0, mode="bilinear")
        near = F.nn.interpolate(F.max_pool2d(low, 2), scale_factor=2.0, mode="nearest")
        return F.concat([low, up, near], axis=1)


class SoftmaxHead(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 8, 3)
        self.fc = M.Linear(8, 5)

    def forward(self, x):
        x = F.flatten(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1), 1)
        return F.softmax(self.fc(F.dropout(x, 0.5, training=False)), axis=1)


@pytest.mark.parametrize("module, must_use", [
    (SqueezeExcite, {"Conv", "Sigmoid", "Mul"}),
    (InvertedResidual, {"Conv", "Max", "Min", "Add"}),
    (ChannelShuffle, {"Reshape", "Transpose", "HardSwish", "Sigmoid", "Shape", "Slice"}),
    (Attention, {"MatMul", "Erf", "ReduceMean", "Exp"}),
    (Neck, {"Resize", "Concat", "AveragePool", "MaxPool"}),
    (SoftmaxHead, {"Gemm", "Exp", "ReduceSum", "Div"}),
], ids=lambda v: getattr(v, "__name__", ""))
def test_user_style_modules_convert_at_any_batch(module, must_use):
    error, ops = _run_both(module(), (1, 3, 16, 16))
    assert error < TOLERANCE
    assert must_use <= set(ops)
    assert "BatchNormalization" not in ops  # folded into the convolutions


def test_batch_norm_stays_a_node_when_not_folded():
    error, ops = _run_both(SqueezeExcite(), (1, 3, 16, 16), fold_bn=False)
    assert error < TOLERANCE and "BatchNormalization" in ops


def test_an_operator_without_a_mapping_is_refused_naming_it_and_the_module():
    class Odd(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.cumsum(self.conv(x), axis=1)

    with pytest.raises(UnsupportedOperatorError, match=r"^cannot convert MegEngine operator Cumsum \(making .*\) to "
                                                       r"ONNX: no mapping for this operator; megzoo.compile\(\.\.\., "
                                                       r"backend='lite'\) and the \.mge export run any MegEngine "
                                                       r"graph$"):
        module_to_onnx(Odd(), (1, 3, 8, 8))
