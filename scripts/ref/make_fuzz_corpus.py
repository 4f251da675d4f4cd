"""Writes the PyTorch and CIFAR-10 seeds of the fuzz corpus (tests/fuzz-corpus/).

    python scripts/ref/make_fuzz_corpus.py CIFAR_BATCHES_DIR

pth/: small state_dicts and checkpoints as torch.save writes them, in the zip format and in
the legacy (pre-1.6) format; cifar10/: the first records of data_batch_1.bin, and a
cifar-10-binary.tar.gz laid out like the official one with one record per batch file.
The safetensors and genotype seeds are written by cnas itself:
`cargo test --test it fuzz::write_corpus -- --ignored`.
"""
import collections
import gzip
import io
import os
import sys
import tarfile

import torch

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fuzz-corpus")


def write_pth():
    torch.manual_seed(0)
    base = torch.randn(3, 4)
    state = collections.OrderedDict([
        ("conv.weight", torch.randn(2, 1, 3, 3)),
        ("bn.num_batches_tracked", torch.tensor(5, dtype=torch.int64)),
        ("bn.running_mean", torch.zeros(2, dtype=torch.float64)),
        ("half", torch.randn(2, 2).half()),
        ("bytes", torch.arange(3, dtype=torch.uint8)),
        ("base", base),
        ("scalar", torch.tensor(1.5)),
    ])
    out = os.path.join(HERE, "pth")
    torch.save(state, os.path.join(out, "state_dict_zip.pth"))
    legacy = collections.OrderedDict(state, view=base[1:, ::2])
    torch.save(legacy, os.path.join(out, "state_dict_legacy.pth"), _use_new_zipfile_serialization=False)
    checkpoint = {
        "epoch": 2,
        "state_dict": collections.OrderedDict(("module." + k, v) for k, v in state.items()),
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}},
                      "param_groups": [{"lr": 0.1, "params": [0]}]},
    }
    torch.save(checkpoint, os.path.join(out, "checkpoint_zip.pth"))
    torch.save(checkpoint, os.path.join(out, "checkpoint_legacy.pth"), _use_new_zipfile_serialization=False)
    param = {"weight": torch.nn.Parameter(torch.randn(2, 3))}
    torch.save(param, os.path.join(out, "parameter_legacy.pth"), _use_new_zipfile_serialization=False)


def write_cifar(batches):
    with open(os.path.join(batches, "data_batch_1.bin"), "rb") as f:
        records = f.read(4 * 3073)
    out = os.path.join(HERE, "cifar10")
    with open(os.path.join(out, "data_batch_1_first4.bin"), "wb") as f:
        f.write(records)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for i, name in enumerate(names):
            data = records[(i % 4) * 3073:(i % 4 + 1) * 3073]
            info = tarfile.TarInfo("cifar-10-batches-bin/" + name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    with open(os.path.join(out, "cifar-10-binary.tar.gz"), "wb") as f:
        f.write(gzip.compress(tar_bytes.getvalue(), mtime=0))


if __name__ == "__main__":
    write_pth()
    write_cifar(sys.argv[1])
