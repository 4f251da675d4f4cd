"""PyTorch reference of cnas's weight-sharing search network and ENAS-style controller.

Mirrors `src/supernet.rs` (the supernet) and `src/controller.rs` (the controller) so a benchmark
can run the same computation on both sides:

* `Supernet(C, num_classes, layers, nodes, primitives)`: stem conv 3x3 (3 -> 3C) + affine BN;
  `layers` search cells, reductions at L//3 and 2L//3 doubling the channels; every edge of
  every cell holds every candidate op (non-affine, stride 2 on the edges from the two cell
  inputs of a reduction cell; pools followed by a non-affine BN); a cell's output concatenates
  all its intermediate nodes; global average pool and a linear classifier. Parameter names
  follow the Rust side: `stem.0`, `stem.1`, `cells.{i}.preprocess{0,1}.*`,
  `cells.{i}._ops.{e}._ops.{k}.*`, `classifier.*`.
* `Supernet.forward(x, normal_arch, reduce_arch)`: each arch is a list of `(op_name, from, to)`
  edges; a cell runs only those edges (summed per node; a node with no edge is zeros).
* `uniform_arch(rng, nodes)`: what `controller::uniform_cell` samples (all ops allowed).
* `Controller`: the LSTM controller of `src/controller.rs` (no temperature, no tanh clipping,
  every op allowed), choices drawn from a Python `random.Random` by inverse CDF on the
  probabilities read back to the host.
"""

import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from darts_model import OPS, FactorizedReduce, ReLUConvBN, _bn  # noqa: E402

PRIMITIVES = [
    "sep_conv_3x3",
    "sep_conv_5x5",
    "max_pool_3x3",
    "avg_pool_3x3",
    "none",
    "skip_connect",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

_POOLS = {"max_pool_3x3", "max_pool_5x5", "max_pool_7x7", "avg_pool_3x3"}


def edge_index(src, dst):
    """Index of edge src -> dst in a cell's `_ops` (node 2: edges 0, 1; node 3: 2, 3, 4; ...)."""
    return dst * (dst - 1) // 2 - 1 + src


def _candidate(op, c, stride):
    """One candidate op built non-affine; a pool is Sequential(pool, non-affine BN)."""
    m = OPS[op](c, stride, False)
    if op in _POOLS:
        return nn.Sequential(m, _bn(c, False))
    return m


class MixedEdge(nn.Module):
    """Every candidate op of one edge (`_ops.k` = primitive k)."""

    def __init__(self, primitives, c, stride):
        super().__init__()
        self._ops = nn.ModuleList(_candidate(p, c, stride) for p in primitives)


class SearchCell(nn.Module):
    def __init__(self, primitives, nodes, c_pp, c_p, c, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.channels = c
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(c_pp, c, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        edges = []
        for dst in range(2, nodes + 2):
            for src in range(dst):
                stride = 2 if reduction and src < 2 else 1
                edges.append(MixedEdge(primitives, c, stride))
        self._ops = nn.ModuleList(edges)

    def forward(self, s0, s1, arch, slots):
        """`arch`: (op_name, from, to) edges, already checked; `slots`: op name -> index k."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for dst in range(2, self.nodes + 2):
            node = None
            for op, src, to in arch:
                if to != dst:
                    continue
                h = self._ops[edge_index(src, dst)]._ops[slots[op]](states[src])
                node = h if node is None else node + h
            if node is None:
                node = self._empty_node(states[1])
            states.append(node)
        return torch.cat(states[2:], dim=1)

    def _empty_node(self, s1):
        n, _, h, w = s1.shape
        if self.reduction:
            h, w = (h + 1) // 2, (w + 1) // 2
        return torch.zeros(n, self.channels, h, w, dtype=s1.dtype, device=s1.device)


class Supernet(nn.Module):
    def __init__(self, C, num_classes, layers, nodes=4, primitives=None):
        super().__init__()
        primitives = list(PRIMITIVES if primitives is None else primitives)
        if len(set(primitives)) != len(primitives):
            raise ValueError("a primitive is listed twice")
        for p in primitives:
            if p not in OPS:
                raise ValueError(f"unknown operation {p!r}")
        if C < 2 or C % 2:
            raise ValueError("C must be even and at least 2")
        self.primitives = primitives
        self.nodes = nodes
        self.layers = layers
        self._slots = {p: k for k, p in enumerate(primitives)}
        c_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False),
            _bn(c_stem, True),
        )
        c_pp, c_p, c_cur = c_stem, c_stem, C
        reduction_prev = False
        cells = []
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_cur *= 2
            cells.append(SearchCell(primitives, nodes, c_pp, c_p, c_cur, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, nodes * c_cur
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

    def check_arch(self, arch):
        for i, (op, src, dst) in enumerate(arch):
            if not (2 <= dst <= self.nodes + 1 and 0 <= src < dst):
                raise ValueError(f"edge {i} ({op}, {src}, {dst}) is not an edge of the supernet")
            if op not in self._slots:
                raise ValueError(f"edge {i}: {op!r} is not a candidate operation")

    def forward(self, x, normal_arch, reduce_arch):
        self.check_arch(normal_arch)
        self.check_arch(reduce_arch)
        s = self.stem(x)
        s0, s1 = s, s
        for cell in self.cells:
            arch = reduce_arch if cell.reduction else normal_arch
            s0, s1 = s1, cell(s0, s1, arch, self._slots)
        out = self.global_pooling(s1)
        return self.classifier(torch.flatten(out, 1))


def uniform_arch(rng, nodes, primitives=None):
    """Per node i: in1, in2 uniform over 0..i+1, op1, op2 uniform over the primitives (in that
    draw order, as `controller::uniform_cell`); edges (op1, in1, i+2), (op2, in2, i+2)."""
    primitives = PRIMITIVES if primitives is None else primitives
    edges = []
    for i in range(nodes):
        in1 = rng.randrange(i + 2)
        in2 = rng.randrange(i + 2)
        op1 = primitives[rng.randrange(len(primitives))]
        op2 = primitives[rng.randrange(len(primitives))]
        edges.append((op1, in1, i + 2))
        edges.append((op2, in2, i + 2))
    return edges


def _draw(u, probs):
    """Inverse CDF: the first j whose cumulative probability exceeds u (skipping zeros)."""
    acc = 0.0
    for j, p in enumerate(probs):
        acc += p
        if u < acc and p > 0.0:
            return j
    for j in range(len(probs) - 1, -1, -1):
        if probs[j] > 0.0:
            return j
    return 0


class Controller(nn.Module):
    """The LSTM controller of `src/controller.rs`; variables initialised uniform(-0.1, 0.1)."""

    def __init__(self, nodes=4, num_ops=8, hidden=128):
        super().__init__()
        self.nodes = nodes
        self.num_ops = num_ops
        self.hidden = hidden
        h = hidden
        self.node_emb = nn.Parameter(torch.empty(nodes + 1, h))
        self.op_emb = nn.Parameter(torch.empty(num_ops, h))
        self.w_ih = nn.Parameter(torch.empty(4 * h, h))
        self.w_hh = nn.Parameter(torch.empty(4 * h, h))
        self.b = nn.Parameter(torch.empty(4 * h))
        self.w_key = nn.Parameter(torch.empty(h, h))
        self.w_query = nn.Parameter(torch.empty(h, h))
        self.v = nn.Parameter(torch.empty(h))
        self.op_head = nn.Linear(h, num_ops)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    @staticmethod
    def _distribution(logits):
        log_p = torch.log_softmax(logits, 0)
        p = log_p.exp()
        entropy = -(p * log_p).sum()
        return log_p, entropy, p.detach().tolist()

    def sample(self, rng, primitives=None, searched_nodes=None):
        """Returns (arch edges, log_prob, node_entropy, op_entropy); one `rng.random()` per
        choice, in the order in 1, in 2, op 1, op 2 per node."""
        primitives = PRIMITIVES if primitives is None else primitives
        searched_nodes = self.nodes if searched_nodes is None else searched_nodes
        h = torch.zeros(1, self.hidden)
        c = torch.zeros(1, self.hidden)
        x = torch.zeros(1, self.hidden)  # the released controller's first input
        keys = self.node_emb.matmul(self.w_key.t())
        log_probs, node_ent, op_ent, edges = [], [], [], []
        for i in range(searched_nodes):
            states = i + 2
            inputs = []
            for _ in range(2):
                h, c = torch.lstm_cell(x, (h, c), self.w_ih, self.w_hh, self.b, None)
                query = h.matmul(self.w_query.t())
                scores = torch.tanh(keys[:states] + query).matmul(self.v)
                log_p, ent, probs = self._distribution(scores)
                j = _draw(rng.random(), probs)
                log_probs.append(log_p[j])
                node_ent.append(ent)
                inputs.append(j)
                x = self.node_emb[j].unsqueeze(0)
            ops = []
            for _ in range(2):
                h, c = torch.lstm_cell(x, (h, c), self.w_ih, self.w_hh, self.b, None)
                logits = self.op_head(h).squeeze(0)
                log_p, ent, probs = self._distribution(logits)
                k = _draw(rng.random(), probs)
                log_probs.append(log_p[k])
                op_ent.append(ent)
                ops.append(k)
                x = self.op_emb[k].unsqueeze(0)
            edges.append((primitives[ops[0]], inputs[0], i + 2))
            edges.append((primitives[ops[1]], inputs[1], i + 2))
        return (
            edges,
            torch.stack(log_probs).sum(),
            torch.stack(node_ent).sum(),
            torch.stack(op_ent).sum(),
        )


class Baseline:
    """Moving-average reward baseline as released: the baseline moves first and the advantage
    is against the moved value; the first reward initialises it (advantage 0)."""

    def __init__(self, decay=0.99):
        self.decay = decay
        self.value = None

    def update(self, reward):
        if self.value is None:
            self.value = reward
        else:
            self.value = self.decay * self.value + (1.0 - self.decay) * reward
        return reward - self.value


def count_params(model):
    return sum(p.numel() for p in model.parameters())

