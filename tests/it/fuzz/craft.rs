//! Hand-built files for the regression tests: pickles opcode by opcode, `torch.save` files of
//! both formats around them, and a tar header that claims what it likes.
use std::io::Write;

/// `torch.save`'s legacy first pickle: PyTorch's magic number.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

#[derive(Default)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        match i32::try_from(v) {
            Ok(v) => self.op(b"J").op(&v.to_le_bytes()),
            Err(_) => self.op(&[0x8a, 8]).op(&v.to_le_bytes()),
        }
    }

    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
    }

    fn ints(&mut self, values: &[i64]) -> &mut Self {
        self.op(b"(");
        for &v in values {
            self.int(v);
        }
        self.op(b"t")
    }

    /// `_rebuild_tensor_v2(storage key of FloatStorage with numel elements, offset, size, stride)`.
    pub fn tensor(&mut self, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> &mut Self {
        self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        self.op(b"(").string("storage").global("torch", "FloatStorage").string(key).string("cpu").int(numel);
        self.op(b"tQ").int(offset).ints(size).ints(stride).op(&[0x89]).op(b"}").op(b"tR")
    }
}

/// A state_dict pickle `{name: value}`, the value's opcodes written by `value`.
pub fn state_dict(name: &str, value: impl FnOnce(&mut Pickle)) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(b"}").string(name);
    value(&mut p);
    p.op(b"s.");
    p.0
}

/// A legacy `torch.save` file: `contents`, then float storages `(key, elements)` of zeros.
pub fn legacy_file(contents: &[u8], storages: &[(&str, u64)]) -> Vec<u8> {
    let mut out = LEGACY_MAGIC.to_vec();
    out.extend_from_slice(&[0x80, 0x02, b'M', 0xe9, 0x03, b'.']); // protocol version 1001
    out.extend_from_slice(b"}."); // system info
    out.extend_from_slice(contents);
    let mut keys = Pickle::default();
    keys.op(b"](");
    for (key, _) in storages {
        keys.string(key);
    }
    out.extend_from_slice(&keys.op(b"e.").0);
    for &(_, n) in storages {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend(std::iter::repeat_n(0u8, 4 * n as usize));
    }
    out
}

/// A zip `torch.save` file: `contents` as `archive/data.pkl`, each storage as `archive/data/KEY`.
pub fn zip_file(contents: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("archive/data.pkl".to_string(), contents.to_vec())];
    entries.extend(storages.iter().map(|(k, v)| (format!("archive/data/{k}"), v.clone())));
    entries.push(("archive/version".into(), b"3\n".to_vec()));
    zip_of(&entries)
}

/// A stored (uncompressed) zip of `entries`, as torch.save writes.
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        zip.start_file(name.as_str(), options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// The entries of a zip.
pub fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            (entry.name().to_string(), data)
        })
        .collect()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

/// A tar whose one entry, `name`, claims `claimed` bytes and holds `data`.
pub fn tar_claiming(name: &str, claimed: u64, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).unwrap();
    header.set_mode(0o644);
    header.set_size(claimed);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}
