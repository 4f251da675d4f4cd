#!/usr/bin/env python3
"""Check cnas exports with the tools their users have.

    check_export.py pth --weights F.pth --genotype G.json --dataset cifar10|imagenet \
        --channels C --layers L --classes K [--auxiliary] --input X.safetensors --out Y.safetensors
        torch.load(F) (weights_only) into darts_model's network (strict=True); writes its
        eval logits on X's "input" as "logits"; prints the keys' order and dtypes as JSON.
    check_export.py onnx --model M.onnx --input X.safetensors --out Y.safetensors
        onnx.checker.check_model (full check), then onnxruntime on X's "input" one sample at a
        time ("logits_batch1") and all at once ("logits_batchN"); prints the graph's op types,
        opset and input shape as JSON.
    check_export.py torchscript --model M.pt --input X.safetensors --out Y.safetensors [--pth F.pth]
        torch.jit.load(M) with its extra file cnas.json, .eval(), then its logits on X's "input"
        one sample at a time ("logits_batch1") and all at once ("logits_batchN"); prints the
        state_dict's keys, which of them are parameters, and the extra file as JSON; with --pth,
        whether the state_dict equals torch.load(F)'s (same keys, order and values).
    check_export.py pretrained --genotype G.json --image-size S --out DIR [--legacy]
        A file laid out like the published CNAS ImageNet weights: darts_model's ImageNet
        network (48 channels, 14 cells, 1000 classes, auxiliary head) with randomised BatchNorm,
        torch.save(state_dict) to DIR/weights.pth (--legacy: in the pre-1.6 format, which the
        PyTorch 1.5 of the CNAS code wrote by default); one normalised input DIR/input.npy
        (1x3xSxS) and its eval logits DIR/logits.safetensors.
    check_export.py legacy --out DIR
        The same small tensors (float, float64, int64, a scalar) saved as DIR/zip.pth and
        DIR/legacy.pth (with a strided view with an offset too), and as a legacy checkpoint dict
        DIR/checkpoint_legacy.pth ({"epoch", "state_dict" with "module." names, "optimizer"}).
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import darts_model  # noqa: E402
from make_reference import randomise_bn  # noqa: E402


def check_pth(a):
    from safetensors.torch import load_file, save_file
    state = torch.load(a.weights, map_location="cpu", weights_only=True)
    model = darts_model.build_network(a.dataset, a.channels, a.classes, a.layers, a.auxiliary,
                                      darts_model.load_genotype(a.genotype))
    model.load_state_dict(state, strict=True)
    model.eval()
    x = load_file(a.input)["input"]
    with torch.no_grad():
        logits = model(x)[0]
    save_file({"logits": logits.contiguous()}, a.out)
    expected = list(model.state_dict().keys())
    print(json.dumps({
        "type": type(state).__name__,
        "keys": list(state.keys()),
        "same_order_as_pytorch": list(state.keys()) == expected,
        "first_out_of_order": next((f"{k} (PyTorch: {e})" for k, e in zip(state.keys(), expected)
                                    if k != e), None),
        "dtypes": sorted({str(v.dtype) for v in state.values()}),
        "counter_dtypes": sorted({str(v.dtype) for k, v in state.items()
                                  if k.endswith("num_batches_tracked")}),
    }))


def check_onnx(a):
    import numpy as np
    import onnx
    import onnxruntime as ort
    from safetensors.numpy import load_file, save_file
    model = onnx.load(a.model)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    x = load_file(a.input)["input"].astype(np.float32)
    name = session.get_inputs()[0].name
    one = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(x.shape[0])])
    batch = session.run(None, {name: x})[0]
    save_file({"logits_batch1": np.ascontiguousarray(one),
               "logits_batchN": np.ascontiguousarray(batch)}, a.out)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    print(json.dumps({
        "ops": sorted({n.op_type for n in model.graph.node}),
        "nodes": len(model.graph.node),
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "input": [model.graph.input[0].name, dims],
        "output": model.graph.output[0].name,
        "metadata": {p.key: p.value for p in model.metadata_props},
    }))


def check_torchscript(a):
    from safetensors.torch import load_file, save_file
    extra = {"cnas.json": ""}
    model = torch.jit.load(a.model, map_location="cpu", _extra_files=extra)
    model.eval()
    x = load_file(a.input)["input"]
    with torch.no_grad():
        one = torch.cat([model(x[i:i + 1]) for i in range(x.shape[0])])
        batch = model(x)
    save_file({"logits_batch1": one.contiguous(), "logits_batchN": batch.contiguous()}, a.out)
    state = model.state_dict()
    report = {
        "keys": list(state.keys()),
        "parameters": [k for k, _ in model.named_parameters()],
        "extra": json.loads(extra["cnas.json"]),
    }
    if a.pth:
        pth = torch.load(a.pth, map_location="cpu", weights_only=True)
        report["equals_pth"] = list(pth.keys()) == list(state.keys()) and all(
            torch.equal(pth[k], state[k]) for k in pth)
    print(json.dumps(report))


def make_pretrained(a):
    import numpy as np
    from safetensors.torch import save_file
    torch.manual_seed(5)
    model = darts_model.build_network("imagenet", 48, 1000, 14, True,
                                      darts_model.load_genotype(a.genotype))
    randomise_bn(model)
    model.eval()
    os.makedirs(a.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(a.out, "weights.pth"),
               _use_new_zipfile_serialization=not a.legacy)
    x = torch.randn(1, 3, a.image_size, a.image_size)
    with torch.no_grad():
        logits = model(x)[0]
    np.save(os.path.join(a.out, "input.npy"), x.numpy())
    save_file({"logits": logits.contiguous()}, os.path.join(a.out, "logits.safetensors"))
    print(json.dumps({"tensors": len(model.state_dict())}))


def make_legacy(a):
    import collections
    torch.manual_seed(3)
    base = torch.randn(4, 6)
    state = collections.OrderedDict([
        ("conv.weight", torch.randn(3, 2, 3, 3)),
        ("bn.num_batches_tracked", torch.tensor(7, dtype=torch.int64)),
        ("base", base),
        ("view", base[1:, ::2]),
        ("scalar", torch.tensor(2.5)),
        ("double", torch.randn(5, dtype=torch.float64)),
    ])
    os.makedirs(a.out, exist_ok=True)
    # (cnas's zip reader takes contiguous tensors only: the view goes in the legacy files.)
    torch.save(collections.OrderedDict((k, v) for k, v in state.items() if k != "view"),
               os.path.join(a.out, "zip.pth"))
    torch.save(state, os.path.join(a.out, "legacy.pth"), _use_new_zipfile_serialization=False)
    checkpoint = {
        "epoch": 3,
        "state_dict": collections.OrderedDict(("module." + k, v) for k, v in state.items()),
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3, dtype=torch.float64)}},
                      "param_groups": [{"lr": 0.1, "params": [0]}]},
    }
    torch.save(checkpoint, os.path.join(a.out, "checkpoint_legacy.pth"),
               _use_new_zipfile_serialization=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("pth")
    q.add_argument("--weights", required=True)
    q.add_argument("--genotype", required=True)
    q.add_argument("--dataset", required=True, choices=["cifar10", "imagenet"])
    q.add_argument("--channels", type=int, required=True)
    q.add_argument("--layers", type=int, required=True)
    q.add_argument("--classes", type=int, required=True)
    q.add_argument("--auxiliary", action="store_true")
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("onnx")
    q.add_argument("--model", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q = sub.add_parser("torchscript")
    q.add_argument("--model", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--pth")
    q = sub.add_parser("pretrained")
    q.add_argument("--genotype", required=True)
    q.add_argument("--image-size", type=int, default=224)
    q.add_argument("--out", required=True)
    q.add_argument("--legacy", action="store_true")
    q = sub.add_parser("legacy")
    q.add_argument("--out", required=True)
    a = p.parse_args()
    torch.set_num_threads(2)
    {"pth": check_pth, "onnx": check_onnx, "torchscript": check_torchscript, "pretrained": make_pretrained,
     "legacy": make_legacy}[a.what](a)


if __name__ == "__main__":
    main()
