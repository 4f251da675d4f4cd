//! PyTorch `state_dict` files as `torch.save` writes them (the zip format of PyTorch ≥ 1.6),
//! readable by `torch.load` (also with `weights_only=True`) and by cnas itself.
//!
//! Layout: `archive/data.pkl` pickles (protocol 2) an `OrderedDict` of name → tensor, each
//! tensor rebuilt by `torch._utils._rebuild_tensor_v2` from a storage named by a persistent id
//! `('storage', torch.FloatStorage | torch.LongStorage, key, 'cpu', numel)`; the storage bytes
//! (little-endian) are the stored (uncompressed) entry `archive/data/<key>`, aligned to 64 bytes
//! in the file as PyTorch aligns them (so they can be memory-mapped); `archive/version`,
//! `archive/byteorder` and the format markers follow PyTorch's writer.
use std::io::{Cursor, Write};
use std::path::Path;

use tch::{Kind, Tensor};
use zip::write::SimpleFileOptions;

use crate::error::{Error, Result};

/// The top folder of every entry; PyTorch takes it from the first entry, whatever its name.
const ARCHIVE: &str = "archive";
/// PyTorch's own alignment of entry data.
const ALIGNMENT: u16 = 64;

/// Pickle opcodes used (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const NEWFALSE: u8 = 0x89;
    pub const BINPERSID: u8 = b'Q';
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

/// A minimal pickle writer: only what a state_dict needs, no memo (the unpickler needs none).
struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn new() -> Self {
        Pickler { out: vec![op::PROTO, 2] }
    }

    fn op(&mut self, code: u8) {
        self.out.push(code);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.op(op::GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn string(&mut self, s: &str) {
        self.op(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: i64) {
        if (0..=255).contains(&v) {
            self.op(op::BININT1);
            self.out.push(v as u8);
        } else if let Ok(v) = i32::try_from(v) {
            self.op(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            // Two's complement, little-endian, 8 bytes: always long enough for an i64.
            self.op(op::LONG1);
            self.out.push(8);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn int_tuple(&mut self, values: &[i64]) {
        self.op(op::MARK);
        for &v in values {
            self.int(v);
        }
        self.op(op::TUPLE);
    }

    /// `collections.OrderedDict()`: also the empty backward-hooks argument of a tensor.
    fn ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.op(op::EMPTY_TUPLE);
        self.op(op::REDUCE);
    }

    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())` for a contiguous
    /// tensor whose storage is `key`.
    fn tensor(&mut self, key: &str, storage: &str, numel: i64, size: &[i64]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.op(op::MARK);
        // The persistent id names the storage; the loader fetches `data/<key>` for it.
        self.op(op::MARK);
        self.string("storage");
        self.global("torch", storage);
        self.string(key);
        self.string("cpu");
        self.int(numel);
        self.op(op::TUPLE);
        self.op(op::BINPERSID);
        self.int(0);
        self.int_tuple(size);
        self.int_tuple(&contiguous_strides(size));
        self.op(op::NEWFALSE);
        self.ordered_dict();
        self.op(op::TUPLE);
        self.op(op::REDUCE);
    }
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * size[i + 1].max(1);
    }
    strides
}

/// A tensor's storage class and little-endian bytes: int64 stays int64 (BatchNorm's
/// `num_batches_tracked`), everything else is written as float32.
fn storage_bytes(t: &Tensor) -> Result<(&'static str, Vec<u8>)> {
    let flat = t.detach().to_device(tch::Device::Cpu).contiguous().flatten(0, -1);
    Ok(match t.kind() {
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(&flat)?;
            ("LongStorage", v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        _ => {
            let v: Vec<f32> = Vec::try_from(&flat.to_kind(Kind::Float))?;
            ("FloatStorage", v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    })
}

/// The bytes of a `torch.save(state_dict)` file holding `tensors` in the given order.
pub fn state_dict_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut pickle = Pickler::new();
    let mut storages = Vec::with_capacity(tensors.len());
    pickle.ordered_dict();
    pickle.op(op::MARK);
    for (i, (name, t)) in tensors.iter().enumerate() {
        let key = i.to_string();
        let (class, bytes) = storage_bytes(t)?;
        pickle.string(name);
        pickle.tensor(&key, class, t.numel() as i64, &t.size());
        storages.push((key, bytes));
    }
    pickle.op(op::SETITEMS);
    pickle.op(op::STOP);

    let zip_error =
        |e: zip::result::ZipError| Error::BadOption(format!("cannot build the .pth archive: {e}"));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(ALIGNMENT);
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let entry = |zip: &mut zip::ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8]| -> Result<()> {
        zip.start_file(format!("{ARCHIVE}/{name}"), options).map_err(zip_error)?;
        zip.write_all(data).map_err(|e| Error::BadOption(format!("cannot build the .pth archive: {e}")))
    };
    // data.pkl first: PyTorch's reader takes the archive's folder name from the first entry.
    entry(&mut zip, "data.pkl", &pickle.out)?;
    entry(&mut zip, ".format_version", b"1")?;
    entry(&mut zip, ".storage_alignment", ALIGNMENT.to_string().as_bytes())?;
    entry(&mut zip, "byteorder", b"little")?;
    for (key, bytes) in &storages {
        entry(&mut zip, &format!("data/{key}"), bytes)?;
    }
    entry(&mut zip, "version", b"3\n")?;
    Ok(zip.finish().map_err(zip_error)?.into_inner())
}

/// Writes `tensors` as a `torch.save` state_dict file, atomically.
pub fn write_state_dict(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    crate::util::write_atomic(path, &state_dict_bytes(tensors)?)
}

/// Orders state_dict names as PyTorch's module registration does for these networks (stems,
/// cells, auxiliary head, classifier; numbered children by number; weight, bias, then the
/// BatchNorm buffers), so the file reads like one PyTorch wrote.
pub fn pytorch_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn rank(segment: &str) -> (u8, u64, &str) {
        const NAMED: [&str; 18] = [
            "stem",
            "stem0",
            "stem1",
            "cells",
            "preprocess0",
            "preprocess1",
            "_ops",
            "conv_1",
            "conv_2",
            "bn",
            "auxiliary_head",
            "features",
            "classifier",
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ];
        if let Ok(n) = segment.parse::<u64>() {
            return (0, n, "");
        }
        match NAMED.iter().position(|&s| s == segment) {
            Some(i) => (1, i as u64, ""),
            None => (2, 0, segment),
        }
    }
    a.split('.').map(rank).cmp(b.split('.').map(rank))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_of_contiguous_tensors() {
        assert_eq!(contiguous_strides(&[4, 3, 2, 5]), vec![30, 10, 5, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
        assert_eq!(contiguous_strides(&[0, 3]), vec![3, 1]);
    }

    #[test]
    fn ints_take_the_shortest_opcode() {
        let mut p = Pickler::new();
        p.int(7);
        p.int(-1);
        p.int(1 << 40);
        assert_eq!(&p.out[2..4], &[op::BININT1, 7]);
        assert_eq!(&p.out[4..9], &[op::BININT, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(p.out[9], op::LONG1);
        assert_eq!(&p.out[11..19], &(1i64 << 40).to_le_bytes());
    }

    #[test]
    fn names_in_module_order() {
        let mut names = vec![
            "classifier.weight",
            "cells.10.preprocess0.op.1.weight",
            "auxiliary_head.features.2.weight",
            "cells.2._ops.0.op.1.weight",
            "cells.2.preprocess1.op.2.running_var",
            "cells.2.preprocess1.op.2.bias",
            "cells.4.preprocess0.bn.weight",
            "cells.4.preprocess0.conv_2.weight",
            "stem.0.weight",
        ];
        names.sort_by(|a, b| pytorch_order(a, b));
        assert_eq!(
            names,
            vec![
                "stem.0.weight",
                "cells.2.preprocess1.op.2.bias",
                "cells.2.preprocess1.op.2.running_var",
                "cells.2._ops.0.op.1.weight",
                "cells.4.preprocess0.conv_2.weight",
                "cells.4.preprocess0.bn.weight",
                "cells.10.preprocess0.op.1.weight",
                "auxiliary_head.features.2.weight",
                "classifier.weight",
            ]
        );
    }
}
