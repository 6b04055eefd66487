"""A planted-lesion classification problem for the saliency tests: the label depends only on the lesion.

``lesion_data(n, seed, size)`` gives noisy (1, size, size) images; odd items carry a bright
square "lesion" (the positives) whose footprint is their mask. ``train(model, images, labels)``
fits a classifier on it in a few seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch


def lesion_data(n: int, seed: int, size: int = 48, side: int = 12) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(images (n, 1, size, size) float32, labels (n,) int, masks (n, size, size) bool)``."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 0.35, (n, 1, size, size)).astype(np.float32)
    labels = np.arange(n) % 2
    masks = np.zeros((n, size, size), dtype=bool)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(2, size - side - 2, 2)
        images[i, 0, r : r + side, c : c + side] += 1.6
        masks[i, r : r + side, c : c + side] = True
    return torch.from_numpy(images), labels, masks


def train(
    model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, *, steps: int = 60, seed: int = 0
) -> torch.nn.Module:
    """A few Adam steps on mini-batches of the data; returns the model in eval mode."""
    torch.manual_seed(seed)
    target = torch.as_tensor(labels, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(images), (16,), generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images[index]), target[index])
        loss.backward()
        optimizer.step()
    return model.eval()
