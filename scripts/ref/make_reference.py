#!/usr/bin/env python3
"""Generate PyTorch reference data for a DARTS-space evaluation network.

    python scripts/ref/make_reference.py --genotype G.json --dataset cifar10|imagenet \
        --channels C --layers L [--auxiliary] [--batch N] [--image-size S] [--classes K] \
        [--drop-path P] [--seed S] [--threads T] --out DIR
    python scripts/ref/make_reference.py --genotype G.json --dataset ... --channels C \
        --layers L [--auxiliary] [--image-size S] [--classes K] --count-only

Files written under DIR:
    state_dict.pth          torch.save(model.state_dict()) -- initial weights and BN buffers
    state_dict_module.pth   the same with every key prefixed "module."
    checkpoint.pth          {"epoch": 3, "state_dict": ..., "best_acc_top1": 0.5}
    reference.safetensors   input, target (int64), logits_eval, logits_train, aux_train,
                            loss ([1]), grad.<param>, grad_channels_last.<param>,
                            running_after.<bn buffer>,
                            logits_droppath
    meta.json               params, params_total, madds, names, param_names, torch, ...

Sequence (all float32 on CPU): manual_seed(seed); build; randomise every BatchNorm
(running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1),
module order, in that order); snapshot the state dict; draw x ~ N(0, 1) then targets; eval
forward; train forward (drop_path_prob 0) + loss + backward; then, if --drop-path P > 0, a
fresh network loaded from the snapshot, manual_seed(seed + 1), one train forward with
drop_path_prob P.

Image sizes that work with --auxiliary: the auxiliary heads end in a Linear(768) and need a
1x1 map after their 2x2 conv, i.e. cifar10 32 (or 40), imagenet 224 (or 256). Without
--auxiliary any size whose feature maps stay even where FactorizedReduce runs will do
(e.g. imagenet 64 or 96).
"""

import argparse
import collections
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import darts_model  # noqa: E402

DEFAULTS = {"cifar10": (32, 10), "imagenet": (224, 1000)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--genotype", required=True, help="genotype JSON (canonical format)")
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--channels", type=int, required=True)
    p.add_argument("--layers", type=int, required=True)
    p.add_argument("--auxiliary", action="store_true")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--count-only", action="store_true",
                   help="print {params, params_total, madds} as JSON and exit")
    a = p.parse_args(argv)
    size, classes = DEFAULTS[a.dataset]
    if a.image_size is None:
        a.image_size = size
    if a.classes is None:
        a.classes = classes
    if not a.count_only and not a.out:
        p.error("--out is required unless --count-only")
    if not 0.0 <= a.drop_path < 1.0:
        p.error("--drop-path must be in [0, 1)")
    return a


def build(a, genotype):
    return darts_model.build_network(a.dataset, a.channels, a.classes, a.layers, a.auxiliary,
                                     genotype)


def randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)


def sizes(model, a):
    return {
        "params": darts_model.count_params(model),
        "params_total": darts_model.count_params_total(model),
        "madds": darts_model.count_madds(model, (3, a.image_size, a.image_size)),
    }


def aux_hint(a):
    return (f"forward failed at image size {a.image_size} for {a.dataset}"
            + (" with --auxiliary (the auxiliary head needs image size 32/40 for cifar10, "
               "224/256 for imagenet)" if a.auxiliary else ""))


def flat(t):
    t = t.detach().to(torch.float32).contiguous().clone()
    return t.reshape(1) if t.dim() == 0 else t


def _factorized_reduce_subsampled(self, x):
    x = self.relu(x)
    a = F.conv2d(x[:, :, ::2, ::2], self.conv_1.weight)
    b = F.conv2d(x[:, :, 1::2, 1::2], self.conv_2.weight)
    return self.bn(torch.cat([a, b], dim=1))


def main(argv=None):
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    genotype = darts_model.load_genotype(a.genotype)

    torch.manual_seed(a.seed)
    model = build(a, genotype)

    if a.count_only:
        print(json.dumps(sizes(model, a)))
        return

    randomise_bn(model)
    initial = collections.OrderedDict((k, v.detach().clone()) for k, v in
                                      model.state_dict().items())

    x = torch.randn(a.batch, 3, a.image_size, a.image_size)
    target = torch.randint(0, a.classes, (a.batch,), dtype=torch.int64)

    out = {"input": x.clone(), "target": target.clone()}
    try:
        # Eval mode: running statistics, no auxiliary head.
        model.eval()
        model.drop_path_prob = 0.0
        with torch.no_grad():
            out["logits_eval"] = flat(model(x)[0])

        # Train mode, no drop path: batch statistics, momentum update, gradients.
        model.train()
        model.zero_grad(set_to_none=True)
        logits, aux = model(x)
        loss = F.cross_entropy(logits, target)
        if a.auxiliary:
            loss = loss + 0.4 * F.cross_entropy(aux, target)
        loss.backward()
    except RuntimeError as e:
        sys.exit(f"error: {aux_hint(a)}: {e}")

    out["logits_train"] = flat(logits)
    if a.auxiliary:
        out["aux_train"] = flat(aux)
    out["loss"] = flat(loss)
    no_grad = []
    for name, p in model.named_parameters():
        if p.grad is None:  # a parameter that does not reach the output
            no_grad.append(name)
            out["grad." + name] = torch.zeros_like(p, dtype=torch.float32)
        else:
            out["grad." + name] = flat(p.grad)
    for name, b in model.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            out["running_after." + name] = flat(b)

    # The same training step with the input in channels-last layout (as cnas runs on the
    # CPU): convolution kernels sum in another order there, so gradients differ from the
    # contiguous run by more than float noise; cnas's channels-last gradients are compared
    # with these.
    # oneDNN's strided 1x1 convolution backward corrupts the heap in channels-last on AVX-512
    # CPUs for small channel counts (PyTorch 2.11); subsampling and then convolving with
    # stride 1 is the same function (cnas does the same on the CPU).
    original_forward = darts_model.FactorizedReduce.forward
    darts_model.FactorizedReduce.forward = _factorized_reduce_subsampled
    cl = build(a, genotype)
    cl.load_state_dict(initial)
    cl.train()
    cl.drop_path_prob = 0.0
    cl_logits, cl_aux = cl(x.contiguous(memory_format=torch.channels_last))
    cl_loss = F.cross_entropy(cl_logits, target)
    if a.auxiliary:
        cl_loss = cl_loss + 0.4 * F.cross_entropy(cl_aux, target)
    cl_loss.backward()
    for name, p in cl.named_parameters():
        out["grad_channels_last." + name] = (torch.zeros_like(p, dtype=torch.float32)
                                             if p.grad is None else flat(p.grad))
    darts_model.FactorizedReduce.forward = original_forward

    if a.drop_path > 0:
        fresh = build(a, genotype)
        fresh.load_state_dict(initial)
        fresh.train()
        fresh.drop_path_prob = a.drop_path
        torch.manual_seed(a.seed + 1)
        with torch.no_grad():
            out["logits_droppath"] = flat(fresh(x)[0])

    # Sizes (count_madds runs its own eval forward; it does not touch the weights).
    meta = sizes(model, a)
    meta.update({
        "names": [[k, list(v.shape)] for k, v in initial.items()],
        "param_names": [n for n, _ in model.named_parameters()],
        "params_without_grad": no_grad,
        "torch": torch.__version__,
        "config": {
            "genotype": os.path.abspath(a.genotype),
            "dataset": a.dataset, "channels": a.channels, "layers": a.layers,
            "auxiliary": a.auxiliary, "batch": a.batch, "image_size": a.image_size,
            "classes": a.classes, "drop_path": a.drop_path, "seed": a.seed,
        },
    })

    os.makedirs(a.out, exist_ok=True)
    torch.save(initial, os.path.join(a.out, "state_dict.pth"))
    torch.save(collections.OrderedDict(("module." + k, v) for k, v in initial.items()),
               os.path.join(a.out, "state_dict_module.pth"))
    torch.save({"epoch": 3, "state_dict": initial, "best_acc_top1": 0.5},
               os.path.join(a.out, "checkpoint.pth"))

    from safetensors.torch import save_file
    tensors = {}
    for k, v in out.items():
        v = v.detach()
        v = v.to(torch.int64) if k == "target" else v.to(torch.float32)
        tensors[k] = v.contiguous().clone()
    save_file(tensors, os.path.join(a.out, "reference.safetensors"))
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps({"out": a.out, "tensors": len(tensors), "loss": loss.item(),
                      "params": meta["params"], "madds": meta["madds"]}))


if __name__ == "__main__":
    main()
