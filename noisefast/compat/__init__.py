"""Drop-in replacements for the EMA classes users already have, on noisefast's fused EMA kernel.

- :mod:`noisefast.compat.diffusers`: ``EMAModel`` (diffusers.training_utils.EMAModel)
- :mod:`noisefast.compat.timm`: ``ModelEmaV3`` (timm.utils.ModelEmaV3)
- :mod:`noisefast.compat.swa`: ``get_ema_multi_avg_fn`` (torch.optim.swa_utils, hence Lightning's
  WeightAveraging), also exported as ``noisefast.get_ema_multi_avg_fn``

None of them imports its peer: diffusers and timm are needed only for what uses them
(``save_pretrained``/``from_pretrained`` take the diffusers model class). docs/migrating.md has the
line-by-line migration, the measured speed-ups and the semantic differences.
"""
