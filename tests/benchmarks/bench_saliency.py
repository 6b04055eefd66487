"""Benchmark: how close each saliency method gets to the cost of its forward+backward passes.

For one model and one batch of images, in one run:

- time one forward+backward pass of the whole batch (the gradient of the explained logits with
  respect to the input; median of several repeats) -> ``t_pass`` per image;
- for each method, the passes per image it needs in principle (``passes_per_image``: Gradient 1,
  SmoothGrad 25, IG 10, SmoothGrad-IG 250, Grad-CAM 1, Guided Backprop 1, Guided Grad-CAM 2,
  XRAI 200) give the ideal time ``passes x images x t_pass``;
- the measured time of :func:`saliency.methods.explain` on the batch (post-processing, XRAI's
  segmentation and everything else included).

Prints the efficiency ideal / measured per method and overall (sum of ideal / sum of measured).
Target >= 0.7 overall; batching the noise samples and IG steps may exceed 1.

Usage (repository root): python -m tests.benchmarks.bench_saliency [--architecture compact] [--images 8] [--size 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="compact", help="compact (demo), densenet121, resnet-compact, ...")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="explain()'s chunk size")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    args = parser.parse_args()

    from medimg.models import build_network, gradcam_layer
    from saliency.methods import LABELS, METHODS, explain, method_settings, passes_per_image

    torch.manual_seed(0)
    model = build_network(args.architecture, spatial_dims=2, in_channels=1, out_channels=2).eval()
    images = torch.rand(args.images, 1, args.size, args.size)

    def one_pass() -> float:
        x = images.clone().requires_grad_(True)
        start = time.perf_counter()
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        return time.perf_counter() - start

    one_pass()
    t_batch = statistics.median(one_pass() for _ in range(7))
    t_pass = t_batch / args.images
    print(
        f"{args.architecture}, {args.images} images of {args.size}x{args.size}, torch threads "
        f"{torch.get_num_threads()}: one forward+backward {1000 * t_pass:.2f} ms per image"
    )
    methods = [m for m in (args.methods.split(",") if args.methods else METHODS) if m]
    total_ideal = total_measured = 0.0
    print(f"{'method':24s} {'passes':>7s} {'ideal s':>9s} {'measured s':>11s} {'efficiency':>10s}")
    for method in methods:
        settings = method_settings(method, "paper")
        passes = passes_per_image(settings)
        ideal = passes * args.images * t_pass
        start = time.perf_counter()
        explain(
            model, images, method, settings=settings, layer=gradcam_layer(args.architecture), batch_size=args.batch_size
        )
        measured = time.perf_counter() - start
        total_ideal += ideal
        total_measured += measured
        print(f"{LABELS[method]:24s} {passes:7d} {ideal:9.2f} {measured:11.2f} {ideal / measured:10.2f}")
    print(f"{'overall':24s} {'':7s} {total_ideal:9.2f} {total_measured:11.2f} {total_ideal / total_measured:10.2f}")
    print("target: overall efficiency >= 0.7")


if __name__ == "__main__":
    main()
