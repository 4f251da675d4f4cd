#!/usr/bin/env python3
"""Evaluate cnas weights with the PyTorch DARTS network: an independent check of `cnas eval`.

    python scripts/ref/eval_reference.py --weights W.safetensors --genotype G.json \
        --channels C --layers L --test-batch cifar-10-batches-bin/test_batch.bin --images N

Reads the first N records of CIFAR-10's test batch, normalises them with CIFAR-10's channel
means and standard deviations, runs the network in eval mode and prints JSON:
{"top1", "top5", "loss", "images", "confusion" (rows: true class)}.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import darts_model  # noqa: E402

MEAN = [0.49139968, 0.48215827, 0.44653124]
STD = [0.24703233, 0.24348505, 0.26158768]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--genotype", required=True)
    p.add_argument("--channels", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--test-batch", required=True)
    p.add_argument("--images", type=int, required=True)
    a = p.parse_args()

    state = load_file(a.weights)
    auxiliary = any(k.startswith("auxiliary_head.") for k in state)
    model = darts_model.build_network("cifar10", a.channels, 10, a.layers, auxiliary,
                                      darts_model.load_genotype(a.genotype))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        sys.exit(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    model.eval()

    raw = np.fromfile(a.test_batch, dtype=np.uint8).reshape(-1, 3073)[: a.images]
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    images = torch.from_numpy(raw[:, 1:].astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
    images = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)

    with torch.no_grad():
        logits = torch.cat([model(images[i:i + 100])[0] for i in range(0, len(images), 100)])
    loss = F.cross_entropy(logits, labels).item()
    top5 = logits.topk(5, dim=1).indices
    top1 = (top5[:, 0] == labels).float().mean().item()
    top5 = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    for t, q in zip(labels.tolist(), logits.argmax(1).tolist()):
        confusion[t, q] += 1
    print(json.dumps({"top1": top1, "top5": top5, "loss": loss, "images": len(labels),
                      "confusion": confusion.tolist()}))


if __name__ == "__main__":
    main()
