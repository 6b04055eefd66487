"""Benchmark: the batched (``torch.func.vmap``) diagonal Fisher against the per-sample Python loop.

For one model, the compact MONAI DenseNet (``build_network("compact", spatial_dims=2,
in_channels=1, out_channels=4)``, BN running statistics set by a few train-mode forwards), and
1024 random 1x64x64 images with random labels (the Fisher subset is at least 1,000 samples), in
one run:

- :func:`continual.ewc.estimate_fisher` (per-sample gradients by ``vmap(grad(functional_call))``
  over chunks of ``--batch-size`` samples, BN in eval mode);
- :func:`continual.ewc.fisher_loop_reference` (one forward and backward pass per sample);

each timed as the median of ``--repeats`` runs after one warm-up, then their agreement: the
largest relative difference over all Fisher entries, ``|batched - loop| / max(|loop|)`` per
parameter tensor. Prints both times and the speed-up.

Target: speed-up >= 5x at the defaults (1024 images of 64x64, chunks of
:func:`continual.ewc.default_chunk`: 256 for this model), with a maximum relative difference below
1e-4 (float32 rounding). The in-place ReLUs of MONAI's DenseNet work under
``vmap``/``grad`` as they are (torch 2.13); no out-of-place copy is needed.

Measured on the shared 2-core x86-64 CPU (torch 2.13.0+cpu), 2 threads, defaults (1024 images,
chunks of 256): 0.61-0.64 s against 3.52-3.55 s, **5.5-5.8x**, max relative difference 2.3e-5.
Smaller workloads miss the target: 256 images in chunks of 128 4.7-4.9x, 64 images in one chunk of
64 4.0x (1 thread: 2.8x). A vmap call has a fixed cost of about 25 ms (Python dispatch through the
~700 module calls of functional_call under grad and vmap), amortized only over large chunks, and
the per-sample work is about twice an ordinary batched backward pass: the script also prints the
bound "loop / plain batched forward+backward" (no per-sample gradients at all), 8.7x here.

Usage (repository root): python -m tests.benchmarks.bench_fisher [--images 1024] [--size 64] [--batch-size 0]
    [--repeats 3] [--threads N] [--mode empirical_logprob]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=0, help="chunk (0: continual.ewc.default_chunk)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--mode", default="empirical_logprob", help="empirical_logprob or true_fisher")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from continual.ewc import default_chunk, estimate_fisher, fisher_loop_reference
    from medimg.models import build_network

    torch.manual_seed(0)
    model = build_network("compact", spatial_dims=2, in_channels=1, out_channels=4)
    with torch.no_grad():  # non-default BN running statistics
        for _ in range(3):
            model(torch.randn(16, 1, args.size, args.size) * 0.5 + 0.2)
    if not args.batch_size:
        args.batch_size = default_chunk(model)
    images = torch.rand(args.images, 1, args.size, args.size)
    labels = torch.randint(0, 4, (args.images,))
    data = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, args.images, args.batch_size)
    ]
    n_params = sum(p.numel() for p in model.parameters())

    def timed(fn) -> tuple[float, object]:
        fn(model, data, mode=args.mode, batch_size=args.batch_size)  # warm-up
        times, result = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn(model, data, mode=args.mode, batch_size=args.batch_size)
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    t_batched, batched = timed(estimate_fisher)
    t_loop, loop = timed(fisher_loop_reference)

    def plain_pass() -> float:  # one ordinary batched forward+backward (no per-sample gradients)
        start = time.perf_counter()
        model.eval()
        for images_b, labels_b in data:
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(images_b), labels_b, reduction="sum").backward()
        model.train()
        return time.perf_counter() - start

    plain_pass()
    t_plain = statistics.median(plain_pass() for _ in range(args.repeats))
    worst_name, worst = "", 0.0
    for name, ref in loop.values.items():
        rel = ((batched.values[name] - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        if rel > worst:
            worst_name, worst = name, rel
    print(
        f"compact DenseNet ({n_params:,} parameters), {args.images} images of 1x{args.size}x{args.size}, "
        f"batch {args.batch_size}, mode {args.mode}, torch threads {torch.get_num_threads()}"
    )
    print(f"batched (vmap): {t_batched:.3f} s   ({1000 * t_batched / args.images:.2f} ms per image)")
    print(f"per-sample loop: {t_loop:.3f} s   ({1000 * t_loop / args.images:.2f} ms per image)")
    print(f"speed-up: {t_loop / t_batched:.1f}x (target >= 5x)")
    print(
        f"plain batched forward+backward, no per-sample gradients: {t_plain:.3f} s "
        f"(loop / plain = {t_loop / t_plain:.1f}x, a bound for any per-sample method)"
    )
    print(f"max relative difference: {worst:.2e} ({worst_name})")


if __name__ == "__main__":
    main()
