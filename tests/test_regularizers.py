"""ScheduledNoise / GaussianNoise with magnitude schedules, and set_noise_step."""
import pytest
import torch

import noisefast
from noisefast import schedules as S
from noisefast.regularizers import ScheduledNoise, set_noise_step

from helpers import assert_schedule_steps_without_recompile


def _noise_of(layer, x, seed):
    torch.manual_seed(seed)
    return layer(x) - x


def test_schedule_scales_the_noise_exactly():
    x = torch.zeros(1000)
    plain = noisefast.GaussianNoise(0.5)
    scheduled = noisefast.GaussianNoise(0.5, schedule=S.linear(1.0, 0.0, total_steps=10))
    reference = _noise_of(plain, x, seed=11)
    assert torch.equal(_noise_of(scheduled, x, seed=11), reference)  # step 0: factor 1
    scheduled.step(4)
    assert scheduled.current_std() == pytest.approx(0.3)
    torch.testing.assert_close(_noise_of(scheduled, x, seed=11), reference * 0.6, rtol=1e-6, atol=0)
    scheduled.step(6)
    assert torch.equal(_noise_of(scheduled, x, seed=11), x)  # factor 0 at the end: no noise


def test_interval_schedule_turns_noise_on_and_off():
    layer = noisefast.GaussianNoise(1.0, schedule=S.interval(1.0, every=3))
    x = torch.zeros(64)
    noisy = []
    for _ in range(6):
        noisy.append(bool((layer(x) != 0).any()))
        layer.step()
    assert noisy == [True, False, False, True, False, False]


def test_tensor_std_with_schedule():
    layer = noisefast.GaussianNoise(torch.tensor([0.0, 1.0, 2.0]), schedule=S.constant(0.5))
    out = _noise_of(layer, torch.zeros(20000, 3), seed=0)
    assert torch.all(out[:, 0] == 0)
    stds = out[:, 1:].std(dim=0)
    torch.testing.assert_close(stds, torch.tensor([0.5, 1.0]), rtol=0.03, atol=0)


def test_eval_ignores_schedule_and_returns_input():
    layer = noisefast.GaussianNoise(0.5, schedule=S.linear(1.0, 0.0, 10)).eval()
    x = torch.randn(4)
    assert layer(x) is x


def test_num_steps_is_saved_and_restored():
    layer = noisefast.GaussianNoise(0.2, schedule=S.cosine(1.0, 0.0, 100))
    layer.step(37)
    state = layer.state_dict()
    fresh = noisefast.GaussianNoise(0.2, schedule=S.cosine(1.0, 0.0, 100))
    fresh.load_state_dict(state)
    assert fresh.num_steps == 37 and fresh.current_std() == layer.current_std()
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), noisefast.GaussianNoise(0.1))
    net[1].step(5)
    net2 = torch.nn.Sequential(torch.nn.Linear(2, 2), noisefast.GaussianNoise(0.1))
    net2.load_state_dict(net.state_dict())
    assert net2[1].num_steps == 5


def test_bad_state_changes_nothing():
    layer = noisefast.GaussianNoise(0.2)
    layer.step(3)
    with pytest.raises(ValueError):
        layer.load_state_dict({"_extra_state": {"num_steps": -2}})
    with pytest.raises(ValueError):
        layer.load_state_dict({"_extra_state": {"steps": 2}})
    assert layer.num_steps == 3


def test_set_noise_step_reaches_every_noise_module():
    net = torch.nn.Sequential(noisefast.GaussianNoise(0.1), torch.nn.Linear(2, 2),
                              torch.nn.Sequential(noisefast.GaussianNoise(0.2)))
    assert set_noise_step(net, 12) == 2
    assert net[0].num_steps == 12 and net[2][0].num_steps == 12
    with pytest.raises(ValueError, match="step"):
        set_noise_step(net, -1)
    with pytest.raises(TypeError, match="module"):
        set_noise_step("net", 1)


def test_bad_schedule_values_are_errors_naming_the_schedule():
    with pytest.raises(ValueError, match="schedule"):
        noisefast.GaussianNoise(0.2, schedule=lambda step: -1.0)
    layer = noisefast.GaussianNoise(0.2, schedule=lambda step: 1.0 if step < 3 else float("nan"))
    with pytest.raises(ValueError, match="schedule"):
        layer.step(3)
    assert layer.num_steps == 0
    with pytest.raises(ValueError, match="schedule"):
        layer.load_state_dict({"_extra_state": {"num_steps": 5}})
    assert layer.num_steps == 0
    with pytest.raises(TypeError, match="schedule"):
        noisefast.GaussianNoise(0.2, schedule=0.5)
    with pytest.raises(TypeError, match="std"):
        ScheduledNoise(torch.tensor([1, 2]))


def test_repr_names_schedule_and_step():
    layer = noisefast.GaussianNoise(0.2, schedule=S.linear(1.0, 0.0, 10))
    layer.step(2)
    assert "schedule=linear(start=1.0, end=0.0, total_steps=10)" in repr(layer)
    assert "num_steps=2" in repr(layer)


def test_tensor_std_is_checked_on_construction_and_load():
    with pytest.raises(ValueError, match="std"):
        noisefast.GaussianNoise(torch.tensor([0.1, -0.2]))
    layer = noisefast.GaussianNoise(torch.tensor([0.1, 0.2]))
    state = {"std": torch.tensor([0.3, float("inf")]), "_extra_state": {"num_steps": 0}}
    with pytest.raises(ValueError, match="std"):
        layer.load_state_dict(state)
    assert torch.equal(layer.std, torch.tensor([0.1, 0.2]))


def test_changing_magnitude_does_not_recompile():
    layer = noisefast.GaussianNoise(0.3, schedule=S.linear(1.0, 0.0, 10))
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), layer)
    assert_schedule_steps_without_recompile(layer, net, torch.zeros(8, 4), steps=4)


def test_compiles_without_graph_break():
    layer = noisefast.GaussianNoise(0.3, schedule=S.linear(1.0, 0.0, 10))
    layer.step(5)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.zeros(256)
    torch.manual_seed(1)
    out = compiled(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, layer(x))


def test_checkpoint_without_step_count_still_loads():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), noisefast.GaussianNoise(0.1))
    net[1].step(4)
    old = {k: v for k, v in net.state_dict().items() if not k.endswith("_extra_state")}
    net.load_state_dict(old)  # strict
    assert net[1].num_steps == 4


def test_std_shape_mismatch_fails_before_anything_changes():
    layer = noisefast.GaussianNoise(torch.tensor([0.1, 0.2]), schedule=S.linear(1.0, 0.0, 10))
    with pytest.raises(ValueError, match="std"):
        layer.load_state_dict({"std": torch.tensor([0.1, 0.2, 0.3]), "_extra_state": {"num_steps": 5}})
    assert layer.num_steps == 0 and torch.equal(layer.std, torch.tensor([0.1, 0.2]))


def test_dtype_casts_keep_the_factor_exact():
    layer = noisefast.GaussianNoise(0.5, schedule=S.constant(0.7)).half()
    assert layer._factor.dtype == torch.float64 and layer._factor.item() == 0.7
    layer.step()
    assert layer._factor.item() == 0.7
    x = torch.zeros(1000)
    torch.manual_seed(3)
    out = layer.float()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(out, noisefast.gaussian_noise(x, 0.35), rtol=1e-6, atol=0)


def test_schedule_is_fixed_at_construction():
    layer = noisefast.GaussianNoise(0.5)
    with pytest.raises(AttributeError):
        layer.schedule = S.constant(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("std", [0.3, "float32", "float64"], ids=["number", "tensor32", "tensor64"])
@pytest.mark.parametrize("cast", [None, "half", "double"])
def test_scheduled_noise_equals_the_op_with_the_float64_factor(dtype, std, cast):
    # The module keeps a float32 copy of its factor for inputs computed in float32; it must give
    # exactly what the float64 factor gives (a factor that float32 rounds: 1/3 of a non-power of two).
    from noisefast.ops.gaussian_noise import KERNELS, noise_scale
    std = std if isinstance(std, float) else torch.tensor([[0.3], [1.7]], dtype=getattr(torch, std))
    layer = noisefast.GaussianNoise(std, schedule=lambda step: 1.0 / (3.0 + step))
    layer.step(2)
    if cast is not None:  # casts after the step: the factors are rebuilt, not refreshed by a step
        layer = getattr(layer, cast)().float() if isinstance(std, float) else getattr(layer, cast)()
        std = layer.std
    x = torch.randn(2, 333).to(dtype)
    torch.manual_seed(5)
    out = layer(x)
    std_value, scale, inner = noise_scale(x, std)
    factor = torch.tensor(1.0 / 5.0, dtype=torch.float64)
    scale = factor.reshape(1) if scale is None else scale * factor
    torch.manual_seed(5)
    expected = KERNELS.call(x, noisefast.random.draw_seed(x.device), std_value, scale, inner, 0, 1, 1, True)
    assert torch.equal(out, expected)


def test_to_empty_keeps_the_scheduled_factor():
    # to_empty keeps dtypes and leaves memory uninitialised: the factors are rebuilt from the schedule
    # (before: whatever was in the new memory, e.g. 0, silently switched the noise off).
    layer = noisefast.GaussianNoise(0.1, schedule=S.linear(1.0, 0.0, 100))
    layer.num_steps = 50
    layer.to_empty(device="cpu")
    assert layer._factor.item() == 0.5 and layer._factor_float32.item() == 0.5
    assert layer.num_steps == 50


def test_a_module_built_on_the_meta_device_materialises_with_to_empty():
    with torch.device("meta"):
        layer = noisefast.GaussianNoise(0.1, schedule=S.linear(1.0, 0.0, 100))
    layer.to_empty(device="cpu")  # (before: NotImplementedError, cannot copy out of meta tensor)
    assert layer._counter.device.type == "cpu" and layer.num_steps == 0
    layer.step(10)
    assert layer._factor.item() == pytest.approx(0.9) and layer._counter.tensor.item() == 10
    assert layer(torch.zeros(4)).shape == (4,)
