"""noisefast.compat.diffusers.EMAModel side by side with diffusers' EMAModel (skipped without diffusers).

A real training run: a small diffusers UNet2DModel trained with Adam on noise prediction for 200
optimizer steps, both EMAs stepped after each. Equality: the decays are equal; the shadows differ
only by rounding (diffusers computes shadow - (1 - decay) * (shadow - param) in three roundings,
noisefast one lerp), which per step stays within 2 ulps of max(|shadow|, |param|) element by
element (measured: 1.5) and does not accumulate (after 200 steps within 2 ulps of each tensor's
largest magnitude).
"""
import copy
import warnings

import pytest
import torch

from noisefast.compat.diffusers import EMAModel

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e .[test])")
from diffusers import UNet2DModel  # noqa: E402
from diffusers.training_utils import EMAModel as DiffusersEMAModel  # noqa: E402

STEPS = 200
CONFIGS = {
    "ramp": dict(),  # diffusers' defaults: decay 0.9999, (1 + u) / (10 + u)
    "warmup": dict(decay=0.999, use_ema_warmup=True, power=3 / 4),
    "after-step-min-decay": dict(decay=0.99, update_after_step=20, min_decay=0.5, foreach=True),
}


def small_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def train_steps(model, steps, after_step, seed=1):
    """Adam on a noise-prediction loss; after_step(i) after each optimizer step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        x = torch.randn(2, 3, 8, 8, generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, 1000, (2,), generator=gen)
        loss = (model(x + noise, t).sample - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        after_step(i)


def ulp(t: torch.Tensor) -> torch.Tensor:
    a = t.abs()
    return torch.nextafter(a, torch.full_like(a, float("inf"))) - a


def assert_within_ulps(ours, theirs, scale, ulps, what):
    for i, (a, b, s) in enumerate(zip(ours, theirs, scale)):
        bound = ulps * ulp(s)
        worst = ((a - b).abs() / bound).max().item() if a.numel() else 0.0
        assert worst <= 1.0, f"{what}: tensor {i} differs by {worst * ulps:.2f} ulps"


def test_200_steps_side_by_side():
    """One training run, every configuration's pair of EMAs stepped after each optimizer step."""
    model = small_unet()
    pairs = {name: (DiffusersEMAModel(model.parameters(), **kw), EMAModel(model.parameters(), **kw))
             for name, kw in CONFIGS.items()}
    frozen = next(model.parameters())

    def after_step(i):
        if i == 100:  # freezing mid-run: both copy a parameter that does not require grad
            frozen.requires_grad_(False)
        if i == 150:
            frozen.requires_grad_(True)
        for name, (theirs, ours) in pairs.items():
            before = [s.clone() for s in theirs.shadow_params]
            theirs.step(model.parameters())
            # the same step from diffusers' shadows: one update's rounding difference
            one_step = EMAModel(model.parameters(), **CONFIGS[name])
            one_step.load_state_dict({**theirs.state_dict(), "optimization_step": theirs.optimization_step - 1,
                                      "shadow_params": before})
            one_step.step(model.parameters())
            scale = [torch.maximum(b.abs(), p.detach().abs()) for b, p in zip(before, model.parameters())]
            assert_within_ulps(one_step.shadow_params, theirs.shadow_params, scale, 2, f"{name}, step {i + 1}")
            ours.step(model.parameters())
            assert ours.cur_decay_value == theirs.cur_decay_value, name
            assert ours.optimization_step == theirs.optimization_step == i + 1

    train_steps(model, STEPS, after_step)
    for name, (theirs, ours) in pairs.items():
        largest = [torch.full_like(s, s.abs().max().item()) for s in theirs.shadow_params]
        assert_within_ulps(ours.shadow_params, theirs.shadow_params, largest, 2, f"{name} after {STEPS} steps")
        # not a vacuous comparison: the shadows are not the weights
        assert any(not torch.equal(s, p) for s, p in zip(ours.shadow_params, model.parameters()))


def test_state_dicts_load_both_ways_and_continue():
    model = small_unet()
    theirs = DiffusersEMAModel(model.parameters(), decay=0.995, use_ema_warmup=True)
    ours = EMAModel(model.parameters(), decay=0.995, use_ema_warmup=True)
    train_steps(model, 30, lambda i: (theirs.step(model.parameters()), ours.step(model.parameters())))
    # diffusers -> noisefast (through torch.save / weights_only load) and noisefast -> diffusers
    ours_from_theirs = EMAModel(small_unet().parameters())
    ours_from_theirs.load_state_dict(copy.deepcopy(theirs.state_dict()))
    theirs_from_ours = DiffusersEMAModel(small_unet().parameters())
    theirs_from_ours.load_state_dict(ours.state_dict())
    assert set(ours.state_dict()) == set(theirs.state_dict())
    for key in ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                "power"):
        assert ours_from_theirs.state_dict()[key] == theirs.state_dict()[key]
        assert theirs_from_ours.state_dict()[key] == ours.state_dict()[key]
    for a, b in zip(ours_from_theirs.shadow_params, theirs.shadow_params):
        assert torch.equal(a, b)
    for a, b in zip(theirs_from_ours.shadow_params, ours.shadow_params):
        assert torch.equal(a, b)
    # both continue with the same decays from the loaded step
    train_steps(model, 10, lambda i: (theirs_from_ours.step(model.parameters()),
                                      ours_from_theirs.step(model.parameters())), seed=2)
    assert ours_from_theirs.optimization_step == theirs_from_ours.optimization_step == 40
    assert ours_from_theirs.cur_decay_value == theirs_from_ours.cur_decay_value


def test_save_pretrained_from_pretrained_both_ways(tmp_path):
    model = small_unet()
    theirs = DiffusersEMAModel(model.parameters(), decay=0.99, model_cls=UNet2DModel, model_config=model.config)
    ours = EMAModel(model.parameters(), decay=0.99, model_cls=UNet2DModel, model_config=model.config)
    train_steps(model, 20, lambda i: (theirs.step(model.parameters()), ours.step(model.parameters())))
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    loaded_by_diffusers = DiffusersEMAModel.from_pretrained(tmp_path / "ours", UNet2DModel)
    loaded_by_us = EMAModel.from_pretrained(tmp_path / "theirs", UNet2DModel)
    for loaded, saved in ((loaded_by_diffusers, ours), (loaded_by_us, theirs)):
        assert loaded.optimization_step == saved.optimization_step == 20
        assert loaded.decay == 0.99
        for a, b in zip(loaded.shadow_params, saved.shadow_params):
            assert torch.equal(a, b)
    assert isinstance(loaded_by_us, EMAModel) and loaded_by_us.model_cls is UNet2DModel


def test_copy_to_store_restore_match_diffusers():
    model = small_unet()
    theirs = DiffusersEMAModel(model.parameters(), decay=0.9)
    ours = EMAModel(model.parameters(), decay=0.9)
    train_steps(model, 5, lambda i: (theirs.step(model.parameters()), ours.step(model.parameters())))
    trained = [p.detach().clone() for p in model.parameters()]
    ours.load_state_dict(theirs.state_dict())  # the same shadows, so copy_to must give the same model
    twin = copy.deepcopy(model)
    theirs.store(twin.parameters())
    theirs.copy_to(twin.parameters())
    ours.store(model.parameters())
    ours.copy_to(model.parameters())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    ours.restore(model.parameters())
    for a, b in zip(model.parameters(), trained):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="store"):
        ours.restore(model.parameters())


def test_module_argument_turns_warmup_on_as_diffusers():
    model = small_unet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DiffusersEMAModel(model)
    with pytest.warns(FutureWarning, match="use_ema_warmup"):
        ours = EMAModel(model)
    assert ours.use_ema_warmup is theirs.use_ema_warmup is True
    assert ours.get_decay(1000) == theirs.get_decay(1000)


def test_float32_shadows_of_bfloat16_parameters_keep_moving():
    """dtype=float32: the fused kernel reads bf16 weights into float32 shadows; a bf16 shadow
    (diffusers' only option) stalls at decay 0.999 while the float32 one tracks the float64 EMA."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(1000, dtype=torch.bfloat16))
    ours = EMAModel([weight], decay=0.999, dtype=torch.float32)
    theirs = DiffusersEMAModel([weight], decay=0.999)
    exact = weight.detach().double().clone()
    start = theirs.shadow_params[0].clone()
    for step in range(1, 301):
        with torch.no_grad():
            weight.add_(0.01)
        ours.step([weight])
        theirs.step([weight])
        d = ours.cur_decay_value
        exact = d * exact + (1 - d) * weight.detach().double()
    assert ours.shadow_params[0].dtype == torch.float32
    assert (ours.shadow_params[0].double() - exact).abs().max() < 1e-5
    late_moves = (theirs.shadow_params[0].float() - start.float()).abs()
    assert late_moves.max() > 0 and (ours.shadow_params[0].double() - exact).abs().max() < \
        (theirs.shadow_params[0].double() - exact).abs().max() / 10


def test_to_converts_like_diffusers():
    model = small_unet()
    ours = EMAModel(model.parameters())
    theirs = DiffusersEMAModel(model.parameters())
    ours.to(dtype=torch.float64)
    theirs.to(dtype=torch.float64)
    assert [s.dtype for s in ours.shadow_params] == [s.dtype for s in theirs.shadow_params]
    model.double()
    ours.step(model.parameters())  # the plan follows the converted shadows
    theirs.step(model.parameters())
    for a, b in zip(ours.shadow_params, theirs.shadow_params):
        assert torch.equal(a, b)  # first step copies


def test_errors_change_nothing():
    model = small_unet()
    ours = EMAModel(model.parameters(), decay=0.9)
    ours.step(model.parameters())
    state = copy.deepcopy(ours.state_dict())
    params = list(model.parameters())
    with pytest.raises(ValueError, match="tensors"):
        ours.step(params[:-1])
    with pytest.raises(ValueError, match="shape"):
        ours.step(params[1:] + params[:1])
    bad = {**state, "shadow_params": state["shadow_params"][:-1]}
    with pytest.raises(ValueError, match="shadow_params"):
        ours.load_state_dict({**bad, "decay": 0.5})
    with pytest.raises(ValueError, match="decay"):
        ours.load_state_dict({**state, "decay": 1.5, "optimization_step": 7})
    with pytest.raises(TypeError, match="optimization_step"):
        ours.load_state_dict({**state, "optimization_step": 1.5})
    after = ours.state_dict()
    assert after["decay"] == 0.9 and after["optimization_step"] == 1
    for a, b in zip(after["shadow_params"], state["shadow_params"]):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="unexpected"):
        EMAModel(model.parameters(), decya=0.9)
    with pytest.raises(ValueError, match="min_decay"):
        EMAModel(model.parameters(), decay=0.5, min_decay=0.6)
    with pytest.raises(TypeError, match="dtype"):
        EMAModel(model.parameters(), dtype=torch.float16)
