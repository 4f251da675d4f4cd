"""PyTorch definition of the DARTS-space evaluation networks (reference for the Rust side).

The module layout and parameter names follow the usual DARTS evaluation networks so that a
state_dict written by either side loads in the other:

    stem.* | stem0.*, stem1.*            (CIFAR | ImageNet stems)
    cells.<i>.preprocess0.*, cells.<i>.preprocess1.*, cells.<i>._ops.<k>.*
    auxiliary_head.features.*, auxiliary_head.classifier.*
    classifier.*

Genotypes are read from the canonical JSON format:

    {"normal": {"edges": [[op, from, to], ...], "concat": [2, 3, 4, 5]},
     "reduce": {"edges": [...], "concat": [...]}}

Edges are evaluated node by node (stable sort by `to`); the k-th edge in that order is
`_ops[k]`.

Sizes observed with this code (torch 2.11.0, CPU; `make_reference.py --count-only`; genotype
files in scripts/ref/genotypes/):

    CNAS genotype,     cifar10,  C=36, L=20, 32x32:   params 3,695,374 (published 3.7M)
                                                      madds 564,024,960; params incl. aux head 4,171,800
    DARTS_V2 genotype, cifar10,  C=36, L=20, 32x32:   params 3,349,342 (published 3.3M)
                                                      madds 528,359,040; params incl. aux head 3,825,768
    DARTS_V2 genotype, imagenet, C=48, L=14, 224x224: params 4,718,752 (published 4.7M)
                                                      madds 529,911,552; params incl. aux head 5,979,528
    CNAS genotype,     imagenet, C=48, L=14, 224x224: params 5,318,368, madds 577,158,528

params exclude the auxiliary head; madds = one image, eval mode, Conv2d + Linear only
(out_h*out_w*out_c*(in_c/groups)*kh*kw and in*out).  The published DARTS_V2 ImageNet figure
is 574M; conv+linear counting of that genotype gives ~530M (the gap is a known one: other
counters report 523M-545M for the same network; BN, ReLU and pooling together add only ~11M
here).  The parameter counts match the published ones.
"""

import json

import torch
import torch.nn as nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def _bn(c, affine):
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM, affine=affine)


# --------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------


class Zero(nn.Module):
    """The `none` operation: zeros shaped like the (possibly strided) input."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x * 0.0
        return x[:, :, :: self.stride, :: self.stride] * 0.0


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            _bn(c_out, affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            _bn(c_out, affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise KxK, pointwise 1x1, BN) blocks; only the first is strided."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=padding, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_in, 1, bias=False),
            _bn(c_in, affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride=1, padding=padding, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            _bn(c_out, affine),
        )

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1x1 stride-2 convs, the second shifted by one pixel."""

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        assert c_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = _bn(c_out, affine)

    def forward(self, x):
        x = self.relu(x)
        out = torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def _factorized_conv(c, k, stride, affine):
    """Bare Sequential: ReLU, (1,k) conv striding along W, (k,1) conv striding along H, BN."""
    p = k // 2
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(c, c, (1, k), stride=(1, stride), padding=(0, p), bias=False),
        nn.Conv2d(c, c, (k, 1), stride=(stride, 1), padding=(p, 0), bias=False),
        _bn(c, affine),
    )


def _skip(c, stride, affine):
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine=affine)


OPS = {
    "none": lambda c, s, a: Zero(s),
    "avg_pool_3x3": lambda c, s, a: nn.AvgPool2d(3, stride=s, padding=1,
                                                 count_include_pad=False),
    "max_pool_3x3": lambda c, s, a: nn.MaxPool2d(3, stride=s, padding=1),
    "max_pool_5x5": lambda c, s, a: nn.MaxPool2d(5, stride=s, padding=2),
    "max_pool_7x7": lambda c, s, a: nn.MaxPool2d(7, stride=s, padding=3),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, affine=a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, affine=a),
    "sep_conv_7x7": lambda c, s, a: SepConv(c, c, 7, s, 3, affine=a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, affine=a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, affine=a),
    "conv_1x1": lambda c, s, a: ReLUConvBN(c, c, 1, s, 0, affine=a),
    "conv_3x3": lambda c, s, a: ReLUConvBN(c, c, 3, s, 1, affine=a),
    "conv_5x5": lambda c, s, a: ReLUConvBN(c, c, 5, s, 2, affine=a),
    "conv_7x1_1x7": lambda c, s, a: _factorized_conv(c, 7, s, a),
    "conv_1x3_3x1": lambda c, s, a: _factorized_conv(c, 3, s, a),
}


def drop_path(x, drop_prob):
    """Zero whole samples with probability `drop_prob`, rescaling the kept ones."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


# --------------------------------------------------------------------------------------------
# Genotypes
# --------------------------------------------------------------------------------------------


class CellSpec:
    """One cell of a genotype: edges in evaluation order and the concatenated nodes."""

    def __init__(self, edges, concat):
        edges = [(str(op), int(src), int(dst)) for op, src, dst in edges]
        for op, src, dst in edges:
            if op not in OPS:
                raise ValueError(f"unknown operation {op!r}")
            if not 0 <= src < dst:
                raise ValueError(f"edge ({op}, {src}, {dst}) must satisfy 0 <= from < to")
        # Python's sort is stable: within a node the written order is kept.
        self.edges = sorted(edges, key=lambda e: e[2])
        self.nodes = sorted({dst for _, _, dst in self.edges})
        if self.nodes != list(range(2, 2 + len(self.nodes))):
            raise ValueError(f"intermediate nodes must be 2..n+1, got {self.nodes}")
        for _, src, dst in self.edges:
            if src >= dst:
                raise ValueError("edges must point forward")
        self.concat = [int(c) for c in concat]
        for c in self.concat:
            if not 0 <= c < 2 + len(self.nodes):
                raise ValueError(f"concat node {c} does not exist")


class Genotype:
    def __init__(self, normal, reduce):
        self.normal = normal
        self.reduce = reduce

    @staticmethod
    def from_dict(d):
        return Genotype(
            CellSpec(d["normal"]["edges"], d["normal"]["concat"]),
            CellSpec(d["reduce"]["edges"], d["reduce"]["concat"]),
        )


def load_genotype(path):
    with open(path) as f:
        return Genotype.from_dict(json.load(f))


# --------------------------------------------------------------------------------------------
# Cells and networks
# --------------------------------------------------------------------------------------------


class Cell(nn.Module):
    def __init__(self, genotype, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_pp, c)
        else:
            self.preprocess0 = ReLUConvBN(c_pp, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0)
        spec = genotype.reduce if reduction else genotype.normal
        self.reduction = reduction
        self._edges = [(src, dst) for _, src, dst in spec.edges]
        self._concat = list(spec.concat)
        self._num_nodes = len(spec.nodes)
        self.multiplier = len(spec.concat)
        ops = []
        for op, src, _ in spec.edges:
            stride = 2 if reduction and src < 2 else 1
            ops.append(OPS[op](c, stride, True))
        self._ops = nn.ModuleList(ops)

    def forward(self, s0, s1, drop_prob=0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        k = 0
        for node in range(2, 2 + self._num_nodes):
            h = None
            while k < len(self._edges) and self._edges[k][1] == node:
                op = self._ops[k]
                out = op(states[self._edges[k][0]])
                if apply_drop and not isinstance(op, nn.Identity):
                    out = drop_path(out, drop_prob)
                h = out if h is None else h + out
                k += 1
            states.append(h)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Expects an 8x8 input (32x32 images)."""

    def __init__(self, c, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            _bn(128, True),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            _bn(768, True),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class AuxiliaryHeadImageNet(nn.Module):
    """Expects a 7x7 (or 8x8) input (224x224 images); no BN after the 768-channel conv."""

    def __init__(self, c, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False),
            _bn(128, True),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class _Network(nn.Module):
    """Shared cell stack: subclasses define the stem(s) and auxiliary head."""

    def _build_cells(self, genotype, layers, c, c_pp, c_p, reduction_prev):
        self._layers = layers
        self._aux_index = 2 * layers // 3
        reduce_at = (layers // 3, 2 * layers // 3)
        c_cur = c
        cells = []
        c_aux = None
        for i in range(layers):
            reduction = i in reduce_at
            if reduction:
                c_cur *= 2
            cell = Cell(genotype, c_pp, c_p, c_cur, reduction, reduction_prev)
            cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.multiplier * c_cur
            if i == self._aux_index:
                c_aux = c_p
        self.cells = nn.ModuleList(cells)
        return c_p, c_aux

    def _run_cells(self, s0, s1):
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_index and self._auxiliary and self.training:
                aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        logits = self.classifier(torch.flatten(out, 1))
        return logits, aux


class NetworkCIFAR(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        c_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False),
            _bn(c_stem, True),
        )
        c_p, c_aux = self._build_cells(genotype, layers, C, c_stem, c_stem, False)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(c_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_Network):
    def __init__(self, C, num_classes, layers, auxiliary, genotype):
        super().__init__()
        self._auxiliary = auxiliary
        self.drop_path_prob = 0.0
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            _bn(C // 2, True),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            _bn(C, True),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            _bn(C, True),
        )
        c_p, c_aux = self._build_cells(genotype, layers, C, C, C, True)
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadImageNet(c_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)


def build_network(dataset, C, num_classes, layers, auxiliary, genotype):
    if dataset == "cifar10":
        return NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)
    if dataset == "imagenet":
        return NetworkImageNet(C, num_classes, layers, auxiliary, genotype)
    raise ValueError(f"unknown dataset {dataset!r}")


# --------------------------------------------------------------------------------------------
# Size helpers
# --------------------------------------------------------------------------------------------


def count_params(model):
    """Number of parameters outside the auxiliary head (a plain count)."""
    return sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)


def count_params_total(model):
    return sum(p.numel() for p in model.parameters())


def count_madds(model, input_shape):
    """Multiply-adds of one image's eval-mode forward pass (convs and linears only).

    `input_shape` is (3, H, W) or (N, 3, H, W); only H and W are used.
    """
    h, w = input_shape[-2], input_shape[-1]
    total = [0]

    def conv_hook(mod, inp, out):
        kh, kw = mod.kernel_size
        per_out = (mod.in_channels // mod.groups) * kh * kw
        total[0] += out.shape[1] * out.shape[2] * out.shape[3] * per_out

    def linear_hook(mod, inp, out):
        total[0] += mod.in_features * mod.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, h, w, device=p.device, dtype=p.dtype))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return int(total[0])
