#!/usr/bin/env python3
"""PyTorch side of the search-step benchmark (weight-sharing supernet + controllers).

    python scripts/ref/bench_search.py [--channels 16] [--layers 8] [--batch 96] [--steps N] \
        [--warmup W] [--controller-steps M] [--device cpu|cuda] [--threads T] [--seed S] \
        [--nodes 4] [--classes 10] [--image-size 32] [--sparse-update]

Mirrors one step of `train_weights` (uniform warm-up sampling) and of `train_controllers` in
src/search.rs, on random data created once on the device:

1. weights: sample a uniform (normal, reduce) pair with a seeded `random.Random`; forward in
   train mode; cross-entropy; zero_grad(set_to_none=False), as PyTorch 1.5 of the released
   code did; backward; SGD(lr 0.01, momentum 0.9, nesterov, weight_decay 3e-4) step: every
   parameter used so far keeps a (zero) gradient and is updated. `--sparse-update`:
   zero_grad(set_to_none=True) and clip_grad_norm_(5) first, so parameters of ops the pair does
   not use get no gradient and are left alone by the clip and the step.
2. controller: sample normal and reduce cells with two CPU controllers (with grad); supernet
   forward in train mode under no_grad on a held-out batch; top-1 accuracy `.item()` is the
   reward; advantage against a moving-average baseline (decay 0.99); loss =
   -(logp_n + logp_r) * advantage - 0.005 * (sum of the 4 entropies); Adam(lr 3e-4,
   weight_decay 5e-4) zero_grad, backward, clip 5, step.

Each phase runs `warmup` untimed steps, then its timed steps (`steps` for weights,
`controller-steps` for the controller); CUDA is synchronised before each clock read.

Prints one JSON line:
    {"engine": "pytorch", "weights_images_per_s", "controller_images_per_s",
     "weights_ms_per_step", "controller_ms_per_step", "threads", "device", ...config}
"""

import argparse
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search_model import Baseline, Controller, Supernet, count_params, uniform_arch  # noqa: E402

GRAD_CLIP = 5.0
LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 3e-4
CONTROLLER_LR = 3e-4
CONTROLLER_WEIGHT_DECAY = 5e-4
ENTROPY_WEIGHT = 0.005
BASELINE_DECAY = 0.99
CONTROLLER_HIDDEN = 128


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--controller-steps", type=int, default=10)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--breakdown", action="store_true",
                   help="also time the weight step's parts (forward, backward, update)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparse-update", action="store_true",
                   help="drop gradients and clip at 5 (cnas search --sparse-update --grad-clip 5)")
    p.add_argument("--archs", default=None,
                   help="JSON list of [normal_edges, reduce_edges] pairs to use, in order, for the "
                        "weight steps (the cnas side writes the pairs it samples, so both engines "
                        "run the same architectures)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.controller_steps < 1 or a.warmup < 0 or a.batch < 1:
        p.error("steps and controller-steps must be >= 1, warmup >= 0, batch >= 1")
    return a


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

    model = Supernet(a.channels, a.classes, a.layers, nodes=a.nodes).to(device)
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                          weight_decay=WEIGHT_DECAY, nesterov=True)

    # Controllers stay on the CPU, as in cnas.
    normal_ctl = Controller(a.nodes, len(model.primitives), CONTROLLER_HIDDEN)
    reduce_ctl = Controller(a.nodes, len(model.primitives), CONTROLLER_HIDDEN)
    ctl_params = list(normal_ctl.parameters()) + list(reduce_ctl.parameters())
    adam = torch.optim.Adam(ctl_params, lr=CONTROLLER_LR, weight_decay=CONTROLLER_WEIGHT_DECAY)
    baseline = Baseline(BASELINE_DECAY)

    shape = (a.batch, 3, a.image_size, a.image_size)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, a.classes, (a.batch,), device=device)
    x_held = torch.randn(*shape, device=device)
    y_held = torch.randint(0, a.classes, (a.batch,), device=device)

    weight_rng = random.Random(a.seed)
    ctl_rng = random.Random(a.seed + 1)
    params = list(model.parameters())

    given = None
    if a.archs:
        with open(a.archs) as f:
            given = [([tuple(e) for e in n], [tuple(e) for e in r]) for n, r in json.load(f)]
    step_no = [0]

    def weight_step():
        if given:
            normal, reduce = given[step_no[0] % len(given)]
        else:
            normal = uniform_arch(weight_rng, a.nodes, model.primitives)
            reduce = uniform_arch(weight_rng, a.nodes, model.primitives)
        step_no[0] += 1
        logits = model(x, normal, reduce)
        loss = F.cross_entropy(logits, y)
        sgd.zero_grad(set_to_none=a.sparse_update)
        loss.backward()
        if a.sparse_update:
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        sgd.step()

    rewards = []

    def controller_step():
        n_arch, n_logp, n_node_ent, n_op_ent = normal_ctl.sample(ctl_rng, model.primitives)
        r_arch, r_logp, r_node_ent, r_op_ent = reduce_ctl.sample(ctl_rng, model.primitives)
        with torch.no_grad():
            logits = model(x_held, n_arch, r_arch)
            reward = (logits.argmax(-1) == y_held).float().mean().item()
        rewards.append(reward)
        advantage = baseline.update(reward)
        entropy = n_node_ent + n_op_ent + r_node_ent + r_op_ent
        loss = -(n_logp + r_logp) * advantage - ENTROPY_WEIGHT * entropy
        adam.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ctl_params, GRAD_CLIP)
        adam.step()

    def timed(step, warmup, steps):
        for _ in range(warmup):
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        return (time.perf_counter() - t0) / steps

    w_sec = timed(weight_step, a.warmup, a.steps)

    # The parts of weight_step, each timed to the end of its device work (--breakdown).
    parts = [0.0, 0.0, 0.0]
    if a.breakdown:
        for s in range(a.steps):
            if given:
                normal, reduce = given[(a.warmup + s) % len(given)]
            else:
                normal = uniform_arch(weight_rng, a.nodes, model.primitives)
                reduce = uniform_arch(weight_rng, a.nodes, model.primitives)
            marks = [time.perf_counter()]

            def lap():
                sync(device)
                marks.append(time.perf_counter())

            logits = model(x, normal, reduce)
            loss = F.cross_entropy(logits, y)
            lap()
            sgd.zero_grad(set_to_none=a.sparse_update)
            loss.backward()
            lap()
            if a.sparse_update:
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            sgd.step()
            lap()
            for k in range(3):
                parts[k] += marks[k + 1] - marks[k]

    c_sec = timed(controller_step, a.warmup, a.controller_steps)

    out = {
        "engine": "pytorch",
        "weights_images_per_s": a.batch / w_sec,
        "controller_images_per_s": a.batch / c_sec,
        "weights_ms_per_step": w_sec * 1e3,
        "controller_ms_per_step": c_sec * 1e3,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "channels": a.channels,
        "layers": a.layers,
        "nodes": a.nodes,
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "controller_steps": a.controller_steps,
        "classes": a.classes,
        "image_size": a.image_size,
        "seed": a.seed,
        "supernet_params": count_params(model),
        "mean_reward": sum(rewards) / len(rewards),
        "torch": torch.__version__,
        "breakdown_ms_per_step": (
            {k: v * 1e3 / a.steps for k, v in zip(("forward", "backward", "update"), parts)}
            if a.breakdown else None
        ),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
