"""PyTorch's SGD over steps that reach different subsets of the parameters, under the two
gradient-clearing rules a weight-sharing supernet can use:

* `zeroed`: `optimizer.zero_grad(set_to_none=False)`, the behaviour of `zero_grad()` in the
  PyTorch 1.5 the released CNAS code ran on: a parameter that has had a gradient keeps a zero one,
  so later steps still apply weight decay and momentum to it;
* `dropped`: `zero_grad(set_to_none=True)`: parameters a step does not reach are left alone.

    python sgd_rules.py IN.safetensors OUT.safetensors --lr 0.05 --momentum 0.9 \
        --weight-decay 0.01 --steps "0,1;1,2;0;3"

IN holds `p{i}` (start values) and `t{i}` (targets); step k's loss is
sum over the listed i of sum(((k + 1) * p_i - t_i)^2). OUT holds `zeroed.p{i}`, `dropped.p{i}`.
"""
import argparse

import torch
from safetensors.torch import load_file, save_file


def run(start, targets, used_per_step, lr, momentum, weight_decay, set_to_none):
    params = [torch.nn.Parameter(p.clone()) for p in start]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    for k, used in enumerate(used_per_step):
        opt.zero_grad(set_to_none=set_to_none)
        loss = sum((((k + 1) * params[i] - targets[i]) ** 2).sum() for i in used)
        loss.backward()
        opt.step()
    return [p.detach() for p in params]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--momentum", type=float, required=True)
    ap.add_argument("--weight-decay", type=float, required=True)
    ap.add_argument("--steps", required=True, help="used parameter indices per step: '0,1;2;...'")
    a = ap.parse_args()
    tensors = load_file(a.inp)
    n = sum(1 for k in tensors if k.startswith("p"))
    start = [tensors[f"p{i}"] for i in range(n)]
    targets = [tensors[f"t{i}"] for i in range(n)]
    steps = [[int(i) for i in s.split(",") if i] for s in a.steps.split(";")]
    out = {}
    for name, set_to_none in (("zeroed", False), ("dropped", True)):
        for i, p in enumerate(run(start, targets, steps, a.lr, a.momentum, a.weight_decay, set_to_none)):
            out[f"{name}.p{i}"] = p.contiguous()
    save_file(out, a.out)


if __name__ == "__main__":
    main()
