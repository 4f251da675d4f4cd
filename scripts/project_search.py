#!/usr/bin/env python3
"""Projects the wall time of the full default search from a short measured run.

    python scripts/project_search.py RUN_DIR [--train-images 50000] [--wall SECONDS]

RUN_DIR is a finished or interrupted `cnas search` run with the paper's supernet (C=16, 8 cells,
batch 96) on the machine to project for, e.g. one stage of one warm-up and one search epoch.
Its metrics.jsonl gives the measured rates: images/s of the weight phase (warm-up and search
epochs), of the controller phase, and the time of a stage's derivation. The projection applies
them to the default schedule, the released code's (8 stages of 20 warm-up + 40 search epochs;
after each search epoch one controller step per held-out batch, a pass over the held-out part;
at the end of each stage 3 x 10 candidates scored on 10,000 held-out images; the run's own
train portion and batch size):

    stages * ((warmup + epochs) * weight_images / weights_rate
              + epochs * controller_steps * batch / controller_rate
              + rounds * samples * derive_images / derive_rate)

The derivation rate is the measured run's images scored per second (its derive lines); a run
from before that was recorded projects its derive time as measured.

With --wall (the measured run's whole wall time) the time outside the phases (start-up,
checkpoints, data set opening) is reported too, per epoch, and added per projected epoch.
Prints a JSON line and a sentence.
"""

import argparse
import json
import os
import statistics
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--train-images", type=int, default=50000, help="CIFAR-10's training set")
    p.add_argument("--stages", type=int, default=8)
    p.add_argument("--warmup-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--controller-steps", type=int, default=None,
                   help="per search epoch [default: held-out images // batch, one pass]")
    p.add_argument("--derive-candidates", type=int, default=30, help="rounds x samples per stage")
    p.add_argument("--derive-images", type=int, default=10000)
    p.add_argument("--wall", type=float, help="the measured run's wall time in seconds")
    a = p.parse_args(argv)

    try:
        with open(os.path.join(a.run_dir, "config.json")) as f:
            config = json.load(f)
        options = config["search"]
        lines = []
        with open(os.path.join(a.run_dir, "metrics.jsonl")) as f:
            for line in f:
                if line.strip():
                    lines.append(json.loads(line))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {a.run_dir} is not a readable cnas search run: {e}", file=sys.stderr)
        sys.exit(2)
    batch = options["batch_size"]
    shape = (options["init_channels"], options["layers"], batch)
    if shape != (16, 8, 96):
        print(f"warning: the run's supernet (channels, cells, batch) = {shape} is not the "
              "paper's (16, 8, 96): its rates do not project the default search", file=sys.stderr)
    portion = config["data"]["train_portion"]

    weights = [l for l in lines if l.get("phase") in ("warmup", "weights")]
    controller = [l for l in lines if l.get("phase") == "controller"]
    derive = [l for l in lines if l.get("phase") == "derive"]
    if not weights or not controller:
        print("error: the run has no weight or controller epoch to measure", file=sys.stderr)
        sys.exit(2)

    # Rates over all measured epochs: total images over total time.
    def rate(ls):
        return sum(l["images_per_s"] * l["time_s"] for l in ls) / sum(l["time_s"] for l in ls)

    weights_rate = rate(weights)
    controller_rate = rate(controller)
    derive_s = statistics.mean(l["time_s"] for l in derive) if derive else 0.0
    weight_images = (int(a.train_images * portion) // batch) * batch
    heldout_images = a.train_images - int(a.train_images * portion)
    controller_steps = a.controller_steps if a.controller_steps is not None else heldout_images // batch
    derive_images = min(a.derive_images, heldout_images)
    rated = [l for l in derive if l.get("scored_per_s")]
    derive_rate = statistics.mean(l["scored_per_s"] for l in rated) if rated else None
    if derive_rate:
        derive_s = a.derive_candidates * derive_images / derive_rate

    epochs_per_stage = a.warmup_epochs + a.epochs
    per_stage = (
        epochs_per_stage * weight_images / weights_rate
        + a.epochs * controller_steps * batch / controller_rate
        + derive_s
    )
    measured_phases = sum(l["time_s"] for l in weights + controller + derive)
    other_per_epoch = None
    if a.wall is not None:
        other_per_epoch = max(0.0, a.wall - measured_phases) / len(weights)
        per_stage += epochs_per_stage * other_per_epoch
    total = a.stages * per_stage
    out = {
        "weights_images_per_s": weights_rate,
        "controller_images_per_s": controller_rate,
        "derive_s": derive_s,
        "derive_images_per_s": derive_rate,
        "controller_steps": controller_steps,
        "weight_images_per_epoch": weight_images,
        "batch": batch,
        "other_s_per_epoch": other_per_epoch,
        "projected_hours": total / 3600,
        "schedule": f"{a.stages} stages x ({a.warmup_epochs} + {a.epochs}) epochs, "
        f"{controller_steps} controller steps per search epoch, "
        f"{a.derive_candidates} candidates x {derive_images} images per stage",
    }
    print(json.dumps(out))
    print(
        f"projected full search: {total / 3600:.2f} h "
        f"(weights {weights_rate:.0f} images/s, controller {controller_rate:.0f} images/s, "
        f"derive {derive_s:.1f} s per stage)"
    )


if __name__ == "__main__":
    main()
