"""The checks every registered backend gets by registering (``megzoo.inference.backend_names()``):
it compiles a megzoo model for one input size, runs it at two batch sizes equal to eager MegEngine,
names itself, and shares the compiled-model base the rest of megzoo relies on."""
import megengine
import numpy as np
import pytest

import megzoo
from megzoo.inference import CompiledModelBase, backend_names


@pytest.fixture(scope="module")
def model():
    megengine.random.seed(0)
    m = megzoo.get_model("resnet18", num_classes=10)
    m.eval()
    return m


@pytest.mark.parametrize("name", backend_names())
def test_every_backend_compiles_to_eager_parity_at_two_batch_sizes(model, name):
    compiled = megzoo.compile(model, input_shape=(1, 3, 32, 32), backend=name, threads=2)
    assert isinstance(compiled, CompiledModelBase) and compiled.backend == name and compiled.threads == 2
    for batch in (1, 3):
        x = np.random.RandomState(batch).standard_normal((batch, 3, 32, 32)).astype("float32")
        got, ref = compiled(x), model(megengine.tensor(x)).numpy()
        assert got.shape == ref.shape == (batch, 10)
        assert float(np.abs(got - ref).max() / np.abs(ref).max()) < 1e-4
    assert compiled.cached_shapes == [(3, 32, 32)]
