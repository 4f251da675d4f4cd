#!/usr/bin/env python3
"""PyTorch side of the training-step benchmark (CIFAR evaluation network).

    python scripts/ref/bench_step.py --genotype G.json [--channels 36] [--layers 20] \
        [--batch 96] [--steps N] [--warmup W] [--device cpu|cuda] [--threads T] [--amp] \
        [--channels-last] [--classes 10] [--image-size 32] [--seed 0]

NetworkCIFAR with the auxiliary head, drop_path_prob 0.2, SGD(lr 0.025, momentum 0.9,
weight_decay 3e-4). One step: zero_grad, forward, loss = CE + 0.4 * CE(aux), backward,
clip_grad_norm_(5), optimizer step. Input ~ N(0, 1) and targets are drawn once and stay on the
device. `warmup` steps are run untimed, then `steps` steps are timed (CUDA is synchronised
before each clock read). --amp runs forward and loss under torch.autocast(bfloat16).

Prints one JSON line:
    {"engine": "pytorch", "ms_per_step", "images_per_s", "threads", "device", ...}
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import darts_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--genotype", required=True)
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="autocast to bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but CUDA is not available")
    device = torch.device(a.device)
    torch.manual_seed(a.seed)

    genotype = darts_model.load_genotype(a.genotype)
    model = darts_model.NetworkCIFAR(a.channels, a.classes, a.layers, True, genotype)
    model.drop_path_prob = 0.2
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    target = torch.randint(0, a.classes, (a.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=a.amp):
            logits, aux = model(x)
            loss = F.cross_entropy(logits, target) + 0.4 * F.cross_entropy(aux, target)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - t0

    ms = elapsed * 1000.0 / max(a.steps, 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({
        "engine": "pytorch",
        "ms_per_step": ms,
        "images_per_s": a.batch * 1000.0 / ms if ms > 0 else None,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "device_name": name,
        "batch": a.batch, "channels": a.channels, "layers": a.layers,
        "steps": a.steps, "warmup": a.warmup, "amp": a.amp,
        "channels_last": a.channels_last,
        "final_loss": float(loss.detach()) if a.steps > 0 else None,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
