"""noisefast.compat.timm.ModelEmaV3 side by side with timm's ModelEmaV3 (skipped without timm).

A real training run: timm's test_resnet (374k parameters, BatchNorm buffers) trained with SGD for 200
optimizer steps, both EMAs updated after each. timm's foreach path is torch._foreach_lerp_, which
rounds as noisefast's kernel does: the states are equal, bit for bit, at every step.
"""
import copy

import pytest
import torch

from noisefast.compat.timm import ModelEmaV3

timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e .[test])")
from timm.utils import ModelEmaV3 as TimmModelEmaV3  # noqa: E402

STEPS = 200
CONFIGS = {
    "constant": (dict(decay=0.99), False),  # update(model): no step, constant decay
    "warmup": (dict(decay=0.999, use_warmup=True, warmup_power=3 / 4, min_decay=0.1), True),
    "after-step": (dict(decay=0.98, update_after_step=30), True),
    "exclude-buffers": (dict(decay=0.99, exclude_buffers=True), True),
    "no-foreach": (dict(decay=0.99, foreach=False), True),
}


def small_resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10)


def train_steps(model, steps, after_step, seed=1):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (4,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step(i)


def assert_states_equal(a: dict, b: dict):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("config", list(CONFIGS))
def test_200_steps_bit_for_bit(config):
    kwargs, with_step = CONFIGS[config]
    model = small_resnet()
    theirs = TimmModelEmaV3(model, **kwargs)
    ours = ModelEmaV3(model, **kwargs)

    def after_step(i):
        theirs.update(model, step=i + 1 if with_step else None)
        ours.update(model, step=i + 1 if with_step else None)
        if i % 20 == 19 or i == 0:
            assert_states_equal(ours.state_dict(), theirs.state_dict())

    train_steps(model, STEPS, after_step)
    assert_states_equal(ours.state_dict(), theirs.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(ours.module.parameters(), model.parameters()))
    assert ours.get_decay(STEPS) == theirs.get_decay(STEPS)
    assert not ours.module.training


def test_state_dicts_load_both_ways():
    model = small_resnet()
    theirs = TimmModelEmaV3(model, decay=0.9)
    ours = ModelEmaV3(model, decay=0.9)
    train_steps(model, 10, lambda i: (theirs.update(model), ours.update(model)))
    fresh_theirs = TimmModelEmaV3(small_resnet())
    fresh_ours = ModelEmaV3(small_resnet())
    fresh_theirs.load_state_dict(ours.state_dict())  # strict: the same keys
    fresh_ours.load_state_dict(theirs.state_dict())
    assert_states_equal(fresh_theirs.state_dict(), ours.state_dict())
    assert_states_equal(fresh_ours.state_dict(), theirs.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(fresh_ours(x), fresh_theirs(x))  # forward is the averaged model's


def test_set_and_float32_ema_of_bfloat16_model():
    model = small_resnet().to(torch.bfloat16)
    theirs = TimmModelEmaV3(model, decay=0.99, dtype=torch.float32)
    ours = ModelEmaV3(model, decay=0.99, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype) * 1e-2)
        theirs.update(model)
        ours.update(model)
    # timm multiplies and adds for mixed dtypes, noisefast lerps: an ulp or so apart
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        if a.is_floating_point():
            assert a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    ours.set(model)
    for a, b in zip(ours.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b.to(a.dtype))


def test_bfloat16_ema_needs_an_explicit_choice():
    model = small_resnet().to(torch.bfloat16)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        ModelEmaV3(model)
    ours = ModelEmaV3(model, stochastic_rounding=False)
    ours.update(model)


def test_follows_replaced_parameters_and_tied_weights():
    model = small_resnet()
    ours = ModelEmaV3(model, decay=0.5)
    theirs = TimmModelEmaV3(model, decay=0.5)
    model.fc.weight = torch.nn.Parameter(model.fc.weight.detach() + 1)  # replaced, not written in place
    ours.update(model)
    theirs.update(model)
    assert_states_equal(ours.state_dict(), theirs.state_dict())
    # a weight tied under two names is averaged once per update
    tied = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    ema = ModelEmaV3(tied, decay=0.5)
    start = ema.module[0].weight.detach().clone()
    with torch.no_grad():
        tied[0].weight.add_(2.0)
    ema.update(tied)
    assert ema.module[0].weight is ema.module[1].weight
    torch.testing.assert_close(ema.module[0].weight, start + 1.0, rtol=0, atol=1e-6)


def test_errors():
    model = small_resnet()
    ours = ModelEmaV3(model)
    before = copy.deepcopy(ours.state_dict())
    with pytest.raises(ValueError, match="shape|tensors"):
        ours.update(timm.create_model("test_resnet", num_classes=7))
    assert_states_equal(ours.state_dict(), before)
    with pytest.raises(ValueError, match="min_decay"):
        ModelEmaV3(model, decay=0.5, min_decay=0.9)
    with pytest.raises(TypeError, match="model"):
        ModelEmaV3([torch.zeros(2)])
