"""Shared pieces of the digits consistency-training example (examples/train_consistency.py).

- :func:`load_digits_split`: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no
  download), scaled from 0..16 to [-1, 1], split into a fixed train and held-out test part.
- :class:`DigitsUNet`: a small UNet-style network for 1x8x8 images (8x8 -> 4x4 -> 8x8 with skip
  connections, GroupNorm residual blocks conditioned on the noise level, self-attention at 4x4).
  No dropout and no batch statistics, so the student pass and iCT's stop-gradient target pass are
  the same deterministic function of the same weights.
- :class:`ConsistencyModel`: f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma)
  through ``noisefast.consistency_output`` (Song et al. 2023; iCT, Song & Dhariwal 2023).
- :func:`sample`: 1-step and 2-step consistency sampling.
- The quality metrics, none of which needs a download: :class:`DigitsClassifier` (a small CNN trained
  here and cached under the run directory), :func:`frechet_distance` in its feature space (the FID
  recipe with a digits classifier instead of Inception: NOT FID and not comparable with FID numbers),
  :func:`kernel_distance` (the unbiased KID recipe in the same space: NOT KID) and
  :func:`nearest_neighbour_check` against memorisation.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import noisefast

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
# The intermediate level of 2-step sampling: iCT's value for CIFAR-10 (Song & Dhariwal 2023, sec. 5
# reports 2-step FIDs with the second level at sigma = 0.821); we use it unchanged here.
SIGMA_MID = 0.821
N_TRAIN, N_TEST = 1437, 360


# --------------------------------------------------------------------------------------------------
# Data

@dataclass
class DigitsSplit:
    """Train/test tensors: images float32 [n, 1, 8, 8] in [-1, 1], labels int64 [n]."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_digits_split(n_test: int = 360, split_seed: int = 0) -> DigitsSplit:
    """scikit-learn's digits (1797 images of 8x8 pixels, values 0..16) scaled to [-1, 1] by x/8 - 1,
    split by a fixed permutation (numpy seed ``split_seed``) into train (1437) and test
    (``n_test`` = 360, a fifth)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(labels)))
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(images[train].contiguous(), labels[train].contiguous(),
                       images[test].contiguous(), labels[test].contiguous())


class DataOrder:
    """Shuffled mini-batches without replacement, epoch after epoch, from its own CPU generator.

    The state (generator state, the current epoch's permutation and the position in it) is part of
    the training checkpoint, so a resumed run sees exactly the batches an uninterrupted run would.
    A batch never straddles two epochs: the last ``n % batch_size`` images of a permutation are
    skipped (they come up in other epochs).
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}], got {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.pos = 0
        index = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return index

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos,
                "n": self.n, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["n"], state["batch_size"]) != (self.n, self.batch_size):
            raise ValueError(f"data order state is for n={state['n']}, batch_size={state['batch_size']}; "
                             f"this run has n={self.n}, batch_size={self.batch_size}")
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])


# --------------------------------------------------------------------------------------------------
# The consistency model

class NoiseEmbedding(nn.Module):
    """c_noise = ln(sigma) / 4 (EDM's conditioning input) -> random Fourier features -> MLP."""

    def __init__(self, dim: int, num_frequencies: int = 16):
        super().__init__()
        # Fixed frequencies (a buffer, drawn from the model-initialisation RNG).
        self.register_buffer("frequencies", torch.randn(num_frequencies) * 4.0)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        c_noise = torch.log(sigma).unsqueeze(1) / 4
        angles = 2 * math.pi * c_noise * self.frequencies
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding added in between (scale and shift)."""

    def __init__(self, channels_in: int, channels_out: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over the 16 positions of the 4x4 level, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.proj(out)


class DigitsUNet(nn.Module):
    """F(x_in, sigma) for 1x8x8 images: 8x8 (``width`` channels) -> 4x4 (2*width) -> 8x8, with skip
    connections. ``width`` must be a multiple of 8 (GroupNorm with 8 groups)."""

    def __init__(self, width: int = 32, emb_dim: int = 128):
        super().__init__()
        if width % 8:
            raise ValueError(f"width must be a multiple of 8, got {width}")
        w1, w2 = width, 2 * width
        self.embed = NoiseEmbedding(emb_dim)
        self.conv_in = nn.Conv2d(1, w1, 3, padding=1)
        self.down1 = ResBlock(w1, w1, emb_dim)
        self.downsample = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.down2 = ResBlock(w2, w2, emb_dim)
        self.mid = ResBlock(w2, w2, emb_dim)
        self.attn = SelfAttention(w2)
        self.up2 = ResBlock(2 * w2, w2, emb_dim)
        self.upsample = nn.Conv2d(w2, w1, 3, padding=1)
        self.up1 = ResBlock(2 * w1, w1, emb_dim)
        self.norm_out = nn.GroupNorm(8, w1)
        self.conv_out = nn.Conv2d(w1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        emb = self.embed(sigma)
        h1 = self.down1(self.conv_in(x), emb)                  # 8x8
        h2 = self.down2(self.downsample(h1), emb)              # 4x4
        h = self.attn(self.mid(h2, emb))
        h = self.up2(torch.cat([h, h2], dim=1), emb)
        h = self.upsample(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConsistencyModel(nn.Module):
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma), with f(x, sigma_min) = x.

    ``sigma`` is a [B] tensor (any float dtype; used in x's dtype). c_in = 1 / sqrt(sigma^2 +
    sigma_data^2) comes from ``noisefast.consistency_scalings``; the skip/out blend is
    ``noisefast.consistency_output``."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.net = DigitsUNet(width)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype)
        _, _, c_in = noisefast.consistency_scalings(sigma, SIGMA_DATA, SIGMA_MIN)
        raw = self.net(x * c_in[:, None, None, None], sigma)
        return noisefast.consistency_output(raw, x, sigma, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN)


@torch.no_grad()
def sample(model: nn.Module, n: int, *, generator: torch.Generator, device,
           sigma_mid: float = SIGMA_MID, batch_size: int = 512) -> Tuple[torch.Tensor, torch.Tensor]:
    """1-step and 2-step consistency samples (Song et al. 2023, Algorithm 1), float32 [n, 1, 8, 8].

    1 step: x = sigma_max z, x0 = f(x, sigma_max). 2 steps: x = x0 + sqrt(sigma_mid^2 - sigma_min^2) z',
    x0' = f(x, sigma_mid). Each f output is clamped to the data range [-1, 1] (as the consistency
    models code does) before it is used or returned. The 2-step samples continue the 1-step ones.
    """
    one, two = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, 1, 8, 8, generator=generator, device=device)
        x = model(z * SIGMA_MAX, torch.full((b,), SIGMA_MAX, device=device)).clamp(-1, 1)
        one.append(x)
        z = torch.randn(b, 1, 8, 8, generator=generator, device=device)
        x = x + math.sqrt(sigma_mid ** 2 - SIGMA_MIN ** 2) * z
        two.append(model(x, torch.full((b,), sigma_mid, device=device)).clamp(-1, 1))
    return torch.cat(one).float(), torch.cat(two).float()


# --------------------------------------------------------------------------------------------------
# Quality metrics (no download)

CLASSIFIER_FILE = "digits_classifier.pt"
# Bump when the classifier's architecture, data split or training recipe changes: a cached file with
# another version is retrained.
CLASSIFIER_VERSION = 2


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits; ``features`` (64-d, before the last layer) is the space of the
    Frechet distance."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 4x4
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 2x2
            nn.Flatten(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _train_classifier(data: DigitsSplit, epochs: int = 30, seed: int = 0) -> Tuple[DigitsClassifier, float]:
    """Adam, 30 epochs of batch 64 on the train split, with 1-pixel random shifts; deterministic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data.train_images, data.train_labels
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = perm[start:start + 64]
            xb = x[idx]
            # Small translations make the features depend on shape rather than exact pixel positions.
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(F.pad(xb, (1, 1, 1, 1), value=-1.0), (dy, dx), dims=(2, 3))[:, :, 1:9, 1:9]
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.test_images).argmax(1) == data.test_labels).float().mean().item()
    return model, accuracy


def load_or_train_classifier(cache_dir, data: DigitsSplit, *, log=print) -> Tuple[DigitsClassifier, float]:
    """The feature classifier, from ``cache_dir/digits_classifier.pt`` or trained (seconds on a CPU)
    and saved there. Returns (model in eval mode on the CPU, test accuracy)."""
    path = Path(cache_dir) / CLASSIFIER_FILE
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("version") == CLASSIFIER_VERSION:
            model = DigitsClassifier()
            model.load_state_dict(saved["state_dict"])
            return model.eval(), float(saved["test_accuracy"])
    log(f"training the digits feature classifier (cached at {path}) ...")
    model, accuracy = _train_classifier(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"version": CLASSIFIER_VERSION, "state_dict": model.state_dict(),
                "test_accuracy": accuracy}, tmp)
    os.replace(tmp, path)
    log(f"digits classifier test accuracy {accuracy:.4f}")
    return model, accuracy


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between Gaussians N(mu1, cov1) and N(mu2, cov2):

    ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2)

    (Dowson & Landau 1982; the formula of FID, Heusel et al. 2017). The trace of the matrix square
    root is taken from the eigenvalues of the symmetric PSD matrix cov1^1/2 cov2 cov1^1/2 (negative
    round-off eigenvalues clipped to 0), in float64.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def feature_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


@torch.no_grad()
def classifier_features(classifier: DigitsClassifier, images: torch.Tensor) -> np.ndarray:
    return classifier.features(images.detach().float().cpu()).numpy().astype(np.float64)


def frechet_to_reference(features: np.ndarray, reference: Tuple[np.ndarray, np.ndarray], chunk: int) -> float:
    """Mean Frechet distance of consecutive chunks of ``chunk`` samples to the reference statistics.

    The Frechet distance of n samples is biased upward by a term that shrinks like 1/n, so we
    always compare sets of the same size: the generated samples in chunks of the test-set size."""
    count = len(features) // chunk
    if count < 1:
        raise ValueError(f"need at least {chunk} samples for the Frechet distance, got {len(features)}")
    return float(np.mean([frechet_distance(*feature_stats(features[i * chunk:(i + 1) * chunk]), *reference)
                          for i in range(count)]))


def kernel_distance(features: np.ndarray, reference: np.ndarray) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 between two
    feature sets [m, d] and [n, d] (m, n >= 2): the KID recipe (Binkowski et al. 2018, "Demystifying
    MMD GANs", eq. 4 with their kernel) in the digits classifier's space, so NOT KID and not
    comparable with KID values:

    sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1)) - 2 sum k(x_i, y_j) / (m n)

    Unbiased: its expectation is the population MMD^2, 0 for equal distributions (so it can be
    slightly negative). Computed in float64."""
    x, y = np.asarray(features, np.float64), np.asarray(reference, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"kernel_distance needs at least 2 samples in each set, got {m} and {n}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} and {y.shape[1]}")
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_distance_to_reference(features: np.ndarray, reference: np.ndarray, chunk: int) -> Tuple[float, float]:
    """:func:`kernel_distance` of consecutive disjoint chunks of ``chunk`` samples to the reference
    features: (mean over the chunks, its standard error = sample std / sqrt(chunks); NaN with one
    chunk). Each chunk's estimate is unbiased, so the mean is too; the standard error covers the
    sampling of the generated images, not of the (shared) reference set."""
    count = len(features) // chunk
    if count < 1:
        raise ValueError(f"need at least {chunk} samples for the kernel distance, got {len(features)}")
    values = [kernel_distance(features[i * chunk:(i + 1) * chunk], reference) for i in range(count)]
    se = float(np.std(values, ddof=1) / math.sqrt(count)) if count > 1 else float("nan")
    return float(np.mean(values)), se


def nearest_neighbour_distances(queries: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """L2 distance (pixel space, [-1, 1] scale; 64 pixels) from each query to its nearest training image."""
    q = queries.detach().float().cpu().flatten(1)
    t = train.detach().float().cpu().flatten(1)
    return torch.cdist(q, t).min(dim=1).values


def nearest_neighbour_check(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> Dict[str, float]:
    """Memorisation check: compares how close samples and held-out test images come to the train set.

    A model that copies its training images puts samples much closer to the train set than unseen
    real digits are (ratio << 1, many samples below the test images' 5 % quantile); a model that
    generalises gives a ratio around 1 or above and a fraction near 0.05.
    """
    d_samples = nearest_neighbour_distances(samples, train)
    d_test = nearest_neighbour_distances(test, train)
    p05 = torch.quantile(d_test, 0.05)
    return {
        "nn_dist_samples_median": d_samples.median().item(),
        "nn_dist_test_median": d_test.median().item(),
        "nn_ratio": (d_samples.median() / d_test.median()).item(),
        "frac_samples_below_test_p05": (d_samples < p05).float().mean().item(),
    }


def evaluate_samples(classifier: DigitsClassifier, data: DigitsSplit, samples: torch.Tensor,
                     reference: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Dict[str, float]:
    """Frechet distance (digits-classifier features; NOT FID), class coverage and the
    nearest-neighbour check for one set of samples."""
    if reference is None:
        reference = feature_stats(classifier_features(classifier, data.train_images))
    feats = classifier_features(classifier, samples)
    with torch.no_grad():
        predicted = classifier(samples.detach().float().cpu()).argmax(1)
    counts = torch.bincount(predicted, minlength=10).double()
    freq = counts / counts.sum()
    nz = freq[freq > 0]
    out = {"frechet_distance": frechet_to_reference(feats, reference, len(data.test_images)),
           "classes_covered": int((counts > 0).sum().item()),
           "class_entropy_bits": float(-(nz * nz.log2()).sum().item())}
    out.update(nearest_neighbour_check(samples, data.train_images, data.test_images))
    return out


def reference_floor(classifier: DigitsClassifier, data: DigitsSplit) -> Tuple[Tuple[np.ndarray, np.ndarray], float]:
    """Train-set feature statistics and the Frechet distance of the held-out test images to them:
    the value real, unseen digits get with the same sample count (a floor for generated samples)."""
    reference = feature_stats(classifier_features(classifier, data.train_images))
    floor = frechet_distance(*feature_stats(classifier_features(classifier, data.test_images)), *reference)
    return reference, floor
