#!/usr/bin/env python3
"""Reference data from the search supernet of the released CNAS code, for tests/it/supernet.rs.

    python scripts/ref/released_supernet.py SPEC.json OUT_DIR

The network is the released code's `NASNetwork` (github guoyongcs/CNAS, cnas/model/search.py
with the operations of cnas/model/operation.py, written for PyTorch 1.5), re-stated here
independently of cnas's own reference scripts (no import of darts_model.py or
search_model.py) so that it pins cnas to the released definition rather than to itself:

* stem: Conv2d(3, 3C, 3, padding 1, no bias) + affine BatchNorm2d(3C);
* cells 0..L-1, reductions at L//3 and 2L//3 doubling C; C_prev_prev = C_prev = 3C at first,
  then (C_prev, 4 * C_cur) after each cell;
* a cell: preprocess0 = FactorizedReduce(C_pp, C) after a reduction cell, else
  ReLUConvBN(C_pp, C, 1x1); preprocess1 = ReLUConvBN(C_p, C, 1x1) (all non-affine); one NASOp
  per edge (from j to node i+2, j in 0..i+1), stride 2 on the edges from the two inputs of a
  reduction cell, holding one op per primitive of `op_type`, in `op_type` order, built
  non-affine, a pool followed by a non-affine BatchNorm2d;
* `forward(s0, s1, arch)` with `arch` a list of (op index into op_type, from, to): edge id
  (to-2)(to+1)/2 + from; edges run in list order, each adding into its node (the first
  assigns); a node without edges is zeros_like(node 2); output = cat of nodes 2..n+1;
* global average pool, Linear(C_prev, classes).

In the released search, `op_type` is the curriculum's primitive list: the first DARTS
primitive, then the other seven permuted by `torch.randperm(7, Generator.manual_seed(seed))`,
so `cells.i._ops.e._ops.k` is op_type[k]. SPEC gives that order explicitly ("op_order").

SPEC (JSON): channels, layers, classes, image_size, batch, seed, op_order (primitive names),
archs: [{"normal": [[op_name, from, to], ...], "reduce": [...]}, ...] (names are turned into
indices into op_order, as the released Genotype does).

Sequence (float32, CPU, one thread): manual_seed(seed); build (training mode throughout, as in
the released search and derivation); randomise, in module order, every BatchNorm's running
statistics (mean ~ N(0, 0.1), var ~ U(0.5, 1.5)) and the affine stem BN's weight ~ U(0.5, 1.5)
and bias ~ N(0, 0.1), and the classifier bias ~ N(0, 0.1); snapshot the state_dict; draw
x ~ N(0, 1) (batch x 3 x S x S) and targets. Then for each arch a in order: forward (training
mode, so BatchNorm uses batch statistics and updates its running statistics), mean
cross-entropy, backward, record logits, loss, every parameter's gradient (zeros where PyTorch
has none) and every BN buffer after the step; zero the gradients. Weights are never updated.
Then the same again from the snapshot in channels-last layout (gradients only: oneDNN sums
weight gradients in another order there).

Writes OUT_DIR/reference.safetensors with
    state.<name>                    the snapshot (the released state_dict, op_order indices)
    input, target
    logits.<a>, loss.<a>            loss as a 1-element tensor
    grad.<a>.<param>, grad_cl.<a>.<param>
    buffers.<a>.<name>              running_mean / running_var after arch a
and OUT_DIR/meta.json with the torch version, op_order, the state_dict names in order, and
per arch the parameters whose gradient PyTorch left as None (`no_grad.<a>`).
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file


def bn(c, affine):
    # PyTorch's defaults, as the released code uses them: eps 1e-5, momentum 0.1.
    return nn.BatchNorm2d(c, affine=affine)


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x):
        return x


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=False),
            bn(c_out, affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, c, k, stride, pad, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, stride=stride, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, padding=0, bias=False),
            bn(c, affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, stride=1, padding=pad, groups=c, bias=False),
            nn.Conv2d(c, c, 1, padding=0, bias=False),
            bn(c, affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, c, k, stride, pad, dilation, affine):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c, c, k, stride=stride, padding=pad, dilation=dilation, groups=c,
                      bias=False),
            nn.Conv2d(c, c, 1, padding=0, bias=False),
            bn(c, affine),
        )

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    def __init__(self, c_in, c_out, affine):
        super().__init__()
        assert c_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = bn(c_out, affine)

    def forward(self, x):
        x = self.relu(x)
        # The released code pads odd sizes (looking at the height only) before halving.
        if x.size(2) % 2 != 0:
            x = F.pad(x, (1, 0, 1, 0), "constant", 0)
        y = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(y)


def make_op(name, c, stride, affine):
    if name == "none":
        return Zero(stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(c, c, affine)
    if name == "sep_conv_3x3":
        return SepConv(c, 3, stride, 1, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, 5, stride, 2, affine)
    if name == "dil_conv_3x3":
        return DilConv(c, 3, stride, 2, 2, affine)
    if name == "dil_conv_5x5":
        return DilConv(c, 5, stride, 4, 2, affine)
    raise ValueError(f"unknown primitive {name!r}")


class NASOp(nn.Module):
    def __init__(self, c, stride, op_type):
        super().__init__()
        self._ops = nn.ModuleList()
        for name in op_type:
            op = make_op(name, c, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, bn(c, False))
            self._ops.append(op)

    def forward(self, x, k):
        return self._ops[k](x)


class NASCell(nn.Module):
    def __init__(self, n_nodes, c_pp, c_p, c, reduction, reduction_prev, op_type):
        super().__init__()
        self.n_nodes = n_nodes
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_pp, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(n_nodes):
            for j in range(i + 2):
                self._ops.append(NASOp(c, 2 if reduction and j < 2 else 1, op_type))

    def forward(self, s0, s1, arch):
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        for k, f, t in arch:
            edge = (t - 2) * (t + 1) // 2 + f
            h = self._ops[edge](states[f], k)
            states[t] = states[t] + h if t in states else h
        for t in range(2, self.n_nodes + 2):
            if t not in states:
                states[t] = torch.zeros_like(states[2])
        return torch.cat([states[t] for t in range(2, self.n_nodes + 2)], dim=1)


class NASNetwork(nn.Module):
    def __init__(self, C, num_classes, layers, op_type, n_nodes=4, multiplier=4,
                 stem_multiplier=3):
        super().__init__()
        c_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_pp, c_p, c_cur = c_stem, c_stem, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
            self.cells.append(NASCell(n_nodes, c_pp, c_p, c_cur, reduction, reduction_prev,
                                      op_type))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_cur
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x, normal_arch, reduced_arch):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, reduced_arch if cell.reduction else normal_arch)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


def randomise(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
        model.classifier.bias.normal_(0.0, 0.1)


def run(model, x, target, archs, channels_last):
    """Per arch: (logits, loss, {param: grad}, [params without grad], {buffer: value})."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    results = []
    for normal, reduce in archs:
        model.zero_grad(set_to_none=True)
        logits = model(x, normal, reduce)
        loss = F.cross_entropy(logits, target)
        loss.backward()
        grads, none = {}, []
        for name, p in model.named_parameters():
            if p.grad is None:
                none.append(name)
                grads[name] = torch.zeros_like(p).contiguous()
            else:
                grads[name] = p.grad.detach().contiguous().clone()
        buffers = {n: b.detach().contiguous().clone() for n, b in model.named_buffers()
                   if n.endswith(("running_mean", "running_var"))}
        results.append((logits.detach().contiguous(), loss.detach().reshape(1), grads, none,
                        buffers))
    return results


def main():
    spec_path, out_dir = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    op_order = list(spec["op_order"])
    assert sorted(op_order) == sorted(set(op_order)), "op_order lists a primitive twice"

    def ordinal(edges):
        return [(op_order.index(name), int(f), int(t)) for name, f, t in edges]

    archs = [(ordinal(a["normal"]), ordinal(a["reduce"])) for a in spec["archs"]]

    torch.manual_seed(spec["seed"])
    model = NASNetwork(spec["channels"], spec["classes"], spec["layers"], op_order)
    randomise(model)
    snapshot = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    s = spec["image_size"]
    x = torch.randn(spec["batch"], 3, s, s)
    target = torch.randint(0, spec["classes"], (spec["batch"],))

    tensors = {f"state.{k}": v for k, v in snapshot.items()}
    tensors["input"] = x
    tensors["target"] = target
    meta = {"torch": torch.__version__, "op_order": op_order, "names": list(snapshot)}
    for a, (logits, loss, grads, none, buffers) in enumerate(run(model, x, target, archs, False)):
        tensors[f"logits.{a}"] = logits
        tensors[f"loss.{a}"] = loss
        for n, g in grads.items():
            tensors[f"grad.{a}.{n}"] = g
        for n, b in buffers.items():
            tensors[f"buffers.{a}.{n}"] = b
        meta[f"no_grad.{a}"] = none

    model_cl = NASNetwork(spec["channels"], spec["classes"], spec["layers"], op_order)
    model_cl.load_state_dict(snapshot)
    for a, (_, _, grads, _, _) in enumerate(run(model_cl, x, target, archs, True)):
        for n, g in grads.items():
            tensors[f"grad_cl.{a}.{n}"] = g

    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "reference.safetensors"))
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
