#!/usr/bin/env python3
"""A released CNAS supernet state_dict and its scores in PyTorch, for tests/it/score.rs.

    python scripts/ref/score_released.py SPEC.json OUT_DIR

Builds the released search network (`NASNetwork` of released_supernet.py) from SPEC's
channels, layers, classes and op_order after manual_seed(seed), randomises its BatchNorm
statistics and classifier bias as released_supernet.py does, and saves its state_dict with
torch.save as OUT_DIR/supernet-1-0.pth (the released code's file name). Then scores each of
SPEC's archs as the released derivation does: training mode (BatchNorm on each batch's
statistics), no gradients, over SPEC's images file (safetensors: `images` N x 3 x H x W,
`labels` N) in batches of `batch`, in order.

SPEC (JSON): channels, layers, classes, seed, batch, images (path), op_order (primitive names),
archs: [{"normal": [[op_name, from, to], ...], "reduce": [...]}, ...].

Writes OUT_DIR/logits.safetensors (`logits.<a>`: N x classes) and OUT_DIR/scores.json
({"correct": [per arch], "images": N}).
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from released_supernet import NASNetwork, randomise  # noqa: E402


def main():
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    op_order = list(spec["op_order"])

    def ordinal(edges):
        return [(op_order.index(name), int(f), int(t)) for name, f, t in edges]

    torch.manual_seed(spec["seed"])
    model = NASNetwork(spec["channels"], spec["classes"], spec["layers"], op_order)
    randomise(model)
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, "supernet-1-0.pth"))

    data = load_file(spec["images"])
    images, labels = data["images"], data["labels"]
    model.train()
    tensors, correct = {}, []
    with torch.no_grad():
        for a, arch in enumerate(spec["archs"]):
            normal, reduce = ordinal(arch["normal"]), ordinal(arch["reduce"])
            logits = torch.cat([model(x, normal, reduce)
                                for x in torch.split(images, spec["batch"])])
            tensors[f"logits.{a}"] = logits.contiguous()
            correct.append(int((logits.argmax(-1) == labels).sum()))
    save_file(tensors, os.path.join(out_dir, "logits.safetensors"))
    with open(os.path.join(out_dir, "scores.json"), "w") as f:
        json.dump({"correct": correct, "images": int(labels.numel())}, f)


if __name__ == "__main__":
    main()
