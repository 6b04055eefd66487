"""A tiny learnable classification problem for the training tests, and a DDP run of it.

Imported by tests/medimg/test_training.py for the data, the metric and the checkpoint meta.
Run as a script under torchrun (``python -m torch.distributed.run --nproc_per_node 2
--standalone toy_classification.py OUT``) every rank trains the compact net with
:func:`medimg.training.train_classifier` into ``OUT/run`` and writes ``OUT/rank{RANK}.json``:
the SHA-256 of its final state dict, its history, and every file-system write it made under
``OUT/run`` (recorded with an audit hook), so the test can check that only rank 0 wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.metrics import compute_roc_auc
from monai.transforms import EnsureTyped


def bright_square_dataset(n: int, seed: int, size: int = 32) -> Dataset:
    """``n`` noisy (1, size, size) float32 images; label 1 (every other item) has a bright 8x8 square.

    A MONAI ``Dataset`` of ``{"image": MetaTensor, "label": int}`` dicts (``EnsureTyped`` on the image).
    """
    rng = np.random.default_rng(seed)
    items = []
    for index in range(n):
        image = rng.normal(0.0, 0.3, (1, size, size)).astype(np.float32)
        label = index % 2
        if label:
            row, col = rng.integers(2, size - 10, 2)
            image[0, row : row + 8, col : col + 8] += 1.5
        items.append({"image": image, "label": label})
    return Dataset(items, transform=EnsureTyped(keys="image"))


def roc_auc_metric(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """ROC AUC of class 1 (MONAI) and accuracy, for (N,) labels and (N, 2) probabilities."""
    auc = compute_roc_auc(torch.as_tensor(y_prob[:, 1]), torch.as_tensor(y_true))
    return {"roc_auc": float(auc), "accuracy": float(np.mean(y_prob.argmax(axis=1) == y_true))}


def toy_meta(architecture: str = "compact", pipeline: str = "toy") -> dict[str, Any]:
    """Checkpoint meta for a 1-channel, 2-class 2-D classifier."""
    return {
        "pipeline": pipeline,
        "architecture": architecture,
        "network": {"spatial_dims": 2, "in_channels": 1, "out_channels": 2},
        "labels": ["plain", "square"],
        "preprocessing": {"size": [32, 32], "intensity": "none"},
        "training": {"data": "bright squares"},
    }


def state_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer of ``model`` (sorted by name)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _record_writes(root: Path, writes: list[str]) -> None:
    """Append to ``writes`` every path under ``root`` this process opens for writing, creates, renames or removes."""
    root_text = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.chmod"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if text.startswith(root_text):
                writes.append(f"{event} {text}")

    sys.addaudithook(hook)


def main(out: Path) -> None:
    import torch.distributed as dist

    from medimg.models import build_network
    from medimg.training import TrainConfig, train_classifier

    rank = int(os.environ["RANK"])
    run_dir = out / "run"
    writes: list[str] = []
    _record_writes(run_dir, writes)
    torch.manual_seed(1234 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = build_network("compact", out_channels=2)
    result = train_classifier(
        model,
        bright_square_dataset(40, seed=1),
        bright_square_dataset(16, seed=2),
        config=TrainConfig(epochs=2, batch_size=8, lr=3e-3, seed=7),
        out_dir=run_dir,
        metric_fn=roc_auc_metric,
        checkpoint_meta=toy_meta(),
        quiet=rank != 0,
    )
    report = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "sha256": state_sha256(model),
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in result.history],
        "best_epoch": result.best_epoch,
        "group_destroyed": not dist.is_initialized(),
        "writes": writes,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
