//! Reading and writing weights.
//!
//! Reads PyTorch `state_dict`s written by `torch.save` (the zip format, and the legacy format of
//! PyTorch before 1.6; also a checkpoint dict that holds one under `state_dict`, `model`, `net`
//! or `state_dict_ema`), safetensors files, and
//! cnas's own format: a safetensors file whose metadata carries `"format": "cnas"` and the
//! network's configuration (`"network"`: a [`crate::model::NetworkConfig`] as JSON), so the
//! file alone says what it holds.
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::pickle::Object;
use tch::{nn, Kind, Tensor};

use crate::error::{Error, Result};

/// Reading the pickles of `torch.save` files without trusting them.
mod torch_pickle;

/// Named tensors in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Keys under which training scripts commonly store the model inside a checkpoint dict.
const CHECKPOINT_KEYS: [&str; 4] = ["state_dict", "model", "net", "state_dict_ema"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

fn sniff(path: &Path) -> Result<Format> {
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let n = file.read(&mut head).map_err(|e| Error::io(path, e))?;
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(Format::TorchZip);
    }
    if n >= 2 && head[0] == 0x80 && head[1] <= 5 {
        return Ok(Format::TorchLegacy);
    }
    if n >= 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    if n == 0 {
        return Err(Error::bad_file(path, "empty file, expected weights"));
    }
    Err(Error::bad_file(path, "not a weights file (expected a torch.save .pth or a safetensors file)"))
}

/// Reads the network's tensors of a weights file, whatever its format: everything but the
/// optimizer state a `cnas train` checkpoint also holds (see [`is_network_tensor`]).
pub fn read(path: &Path) -> Result<NamedTensors> {
    Ok(network_tensors(read_all(path)?))
}

/// Reads every tensor of a weights file, whatever its format.
pub fn read_all(path: &Path) -> Result<NamedTensors> {
    match sniff(path)? {
        Format::TorchZip => read_pth(path),
        Format::Safetensors => Tensor::read_safetensors(path).map_err(|e| {
            Error::bad_file(path, format!("unreadable safetensors file: {}", first_line(&e.to_string())))
        }),
        Format::TorchLegacy => read_legacy_pth(path),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Reads a `torch.save` zip: the pickle `<folder>/data.pkl`, each storage `<folder>/data/<key>`.
fn read_pth(path: &Path) -> Result<NamedTensors> {
    let bad = |what: &str| {
        Error::bad_file(path, format!("unreadable PyTorch file (truncated or corrupt?): {what}"))
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(&torch_pickle::brief(&e.to_string())))?;
    let pickle_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| bad("no data.pkl in the archive"))?;
    let folder = pickle_name.trim_end_matches("data.pkl").to_string();
    let pickle = zip_entry(&mut zip, &pickle_name, file_len).map_err(|e| bad(&e))?;
    let (contents, _) = torch_pickle::load(&pickle).map_err(|e| bad(&e))?;
    let entries = state_dict_entries(unwrap_torchscript(contents)).ok_or_else(|| {
        Error::bad_file(path, "holds no tensors (expected a state_dict or a checkpoint containing one)")
    })?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let (Object::Unicode(name), Some(stored)) = (name, torch_pickle::stored_tensor(&value)) else {
            continue;
        };
        if !storages.contains_key(&stored.key) {
            let entry = format!("{folder}data/{}", stored.key);
            let data =
                zip_entry(&mut zip, &entry, file_len).map_err(|e| bad(&format!("tensor {name}: {e}")))?;
            storages.insert(stored.key.clone(), data);
        }
        let data = storages.get(&stored.key).map(Vec::as_slice).unwrap_or_default();
        let t = stored.to_tensor(stored.kind, data).map_err(|e| bad(&format!("tensor {name}: {e}")))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err(Error::bad_file(
            path,
            "holds no tensors (expected a state_dict or a checkpoint containing one)",
        ));
    }
    Ok(out)
}

/// The bytes of entry `name`, read no further than the file is long (its header may lie).
fn zip_entry(
    zip: &mut zip::ZipArchive<std::io::BufReader<std::fs::File>>,
    name: &str,
    file_len: u64,
) -> std::result::Result<Vec<u8>, String> {
    let entry = zip.by_name(name).map_err(|e| format!("{name}: {}", torch_pickle::brief(&e.to_string())))?;
    let mut bytes = Vec::new();
    entry
        .take(file_len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: {}", torch_pickle::brief(&e.to_string())))?;
    Ok(bytes)
}

/// A TorchScript module's pickle wraps its state: `__torch__.Module` rebuilt, then built with it.
fn unwrap_torchscript(contents: Object) -> Object {
    if let Object::Build { callable, args } = &contents {
        if let Object::Reduce { callable: class, .. } = callable.as_ref() {
            if matches!(class.as_ref(), Object::Class { module_name, class_name }
                if module_name == "__torch__" && class_name == "Module")
            {
                return args.as_ref().clone();
            }
        }
    }
    contents
}

/// The first pickle of every legacy file: protocol 2, `LONG1` of 10 bytes holding PyTorch's
/// magic number 0x1950a86a20f9469cfc6c, `STOP`.
const LEGACY_MAGIC: [u8; 15] =
    [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];

/// Reads the `torch.save` format of PyTorch before 1.6 (also what later versions write with
/// `_use_new_zipfile_serialization=False`): five pickles (magic number, protocol version
/// 1001, system info, the object with storages as persistent ids, the storage keys in the
/// order their data follows), then each storage as an 8-byte element count and raw
/// little-endian data.
fn read_legacy_pth(path: &Path) -> Result<NamedTensors> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let pickles = LegacyPickles::read(path, &bytes)?;
    let storages = legacy_storages(path, &bytes, &pickles)?;
    let entries = state_dict_entries(pickles.contents).ok_or_else(|| {
        legacy_error(path, "holds no tensors (expected a state_dict or a checkpoint containing one)")
    })?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let (Object::Unicode(name), Some(stored)) = (name, torch_pickle::stored_tensor(&value)) else {
            continue;
        };
        let &(kind, data) = storages
            .get(&stored.key)
            .ok_or_else(|| legacy_error(path, &format!("no data for storage {}", stored.key)))?;
        let t =
            stored.to_tensor(kind, data).map_err(|e| legacy_error(path, &format!("tensor {name}: {e}")))?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err(legacy_error(path, "holds no tensors"));
    }
    Ok(out)
}

fn legacy_error(path: &Path, what: &str) -> Error {
    Error::bad_file(path, format!("unreadable legacy PyTorch file: {what}"))
}

/// What a legacy file's pickles hold, and where the storages' data begins after them.
struct LegacyPickles {
    /// The saved object, its storages as persistent ids.
    contents: Object,
    /// The storage keys, in the order their data follows.
    storage_keys: Vec<String>,
    data_start: usize,
}

impl LegacyPickles {
    fn read(path: &Path, bytes: &[u8]) -> Result<Self> {
        if !bytes.starts_with(&LEGACY_MAGIC) {
            return Err(legacy_error(path, "no PyTorch magic number (not a torch.save file?)"));
        }
        let mut offset = LEGACY_MAGIC.len();
        let mut next_pickle = |what: &str| -> Result<Object> {
            let rest = bytes.get(offset..).unwrap_or_default();
            let (object, used) =
                torch_pickle::load(rest).map_err(|e| legacy_error(path, &format!("{what}: {e}")))?;
            offset += used;
            Ok(object)
        };
        match next_pickle("protocol version")? {
            Object::Int(1001) => {}
            other => {
                let found = torch_pickle::brief(&format!("{other:?}"));
                return Err(legacy_error(path, &format!("protocol version {found}, expected 1001")));
            }
        }
        next_pickle("system info")?;
        let contents = next_pickle("contents")?;
        let storage_keys = match next_pickle("storage keys")? {
            Object::List(keys) => keys.into_iter().filter_map(|k| k.unicode().ok()).collect(),
            other => {
                let found = torch_pickle::brief(&format!("{other:?}"));
                return Err(legacy_error(path, &format!("storage keys {found}")));
            }
        };
        Ok(LegacyPickles { contents, storage_keys, data_start: offset })
    }
}

/// A legacy file's storages by key: element kind and raw bytes.
type Storages<'a> = HashMap<String, (Kind, &'a [u8])>;

/// Slices every storage out of `bytes`: each an 8-byte element count, then its data.
fn legacy_storages<'a>(path: &Path, bytes: &'a [u8], pickles: &LegacyPickles) -> Result<Storages<'a>> {
    let bad = |what: &str| legacy_error(path, what);
    // Element sizes of every storage the contents name, so storages of other parts of a
    // checkpoint (an optimizer's) can be stepped over.
    let mut kinds = HashMap::new();
    collect_storages(&pickles.contents, &mut kinds);
    let mut rest = bytes.get(pickles.data_start..).unwrap_or_default();
    let mut storages = HashMap::new();
    for key in &pickles.storage_keys {
        let kind = *kinds.get(key).ok_or_else(|| bad(&format!("storage {key} of unknown type")))?;
        let (count, after) = rest.split_first_chunk::<8>().ok_or_else(|| bad("truncated"))?;
        // Compared with what is left before any arithmetic: the count may be anything.
        let count = u64::from_le_bytes(*count);
        let elt = kind.elt_size_in_bytes() as u64;
        if count > after.len() as u64 / elt {
            return Err(bad(&format!("truncated (storage {key} claims {count} elements)")));
        }
        let (data, next) = after.split_at(count as usize * elt as usize);
        storages.insert(key.clone(), (kind, data));
        rest = next;
    }
    Ok(storages)
}

/// The entries of the state_dict `contents` holds: a plain state_dict, or a checkpoint dict
/// holding one under a usual key.
fn state_dict_entries(contents: Object) -> Option<Vec<(Object, Object)>> {
    let dict = |o: Object| match o {
        Object::Dict(entries) => Some(entries),
        _ => None,
    };
    let entries = dict(contents)?;
    if entries.iter().any(|(_, v)| torch_pickle::stored_tensor(v).is_some()) {
        return Some(entries);
    }
    CHECKPOINT_KEYS.iter().find_map(|key| {
        entries
            .iter()
            .find(|(k, v)| {
                *k == Object::Unicode(key.to_string())
                    && matches!(v, Object::Dict(d) if d.iter().any(|(_, t)| torch_pickle::stored_tensor(t).is_some()))
            })
            .and_then(|(_, v)| dict(v.clone()))
    })
}

/// Storage key → element kind for every storage persistent id inside `o`.
fn collect_storages(o: &Object, out: &mut HashMap<String, Kind>) {
    match o {
        Object::PersistentLoad(id) => {
            if let Object::Tuple(parts) = id.as_ref() {
                if let [Object::Unicode(tag), Object::Class { class_name, .. }, Object::Unicode(key), ..] =
                    parts.as_slice()
                {
                    if let (true, Some(kind)) = (tag == "storage", torch_pickle::storage_kind(class_name)) {
                        out.insert(key.clone(), kind);
                    }
                }
            }
        }
        Object::Tuple(v) | Object::List(v) => v.iter().for_each(|o| collect_storages(o, out)),
        Object::Dict(v) => v.iter().for_each(|(k, o)| {
            collect_storages(k, out);
            collect_storages(o, out);
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out);
        }
        _ => {}
    }
}

/// What a load found; a load that returns Ok matched every tensor exactly.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// BatchNorm's `num_batches_tracked` counters (cnas does not use them) and optimizer state.
    pub ignored: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (name, shape in the file, shape in the network)
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl LoadReport {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    fn describe(&self) -> String {
        fn list(names: &[String]) -> String {
            const SHOWN: usize = 6;
            let mut s = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if names.len() > SHOWN {
                s.push_str(&format!(", … ({} in all)", names.len()));
            }
            s
        }
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected {}", list(&self.unexpected)));
        }
        if !self.mismatched.is_empty() {
            let shapes: Vec<String> =
                self.mismatched.iter().map(|(n, f, m)| format!("{n} (file {f:?}, network {m:?})")).collect();
            parts.push(format!("wrong shape {}", list(&shapes)));
        }
        parts.join("; ")
    }
}

/// Prefix of the optimizer state a training checkpoint keeps beside the network's tensors.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// False for what a weights file may hold beside the network (a training checkpoint's
/// optimizer state): the one place that decides which tensors belong to the network.
pub fn is_network_tensor(name: &str) -> bool {
    !name.starts_with(OPTIMIZER_PREFIX)
}

/// The tensors of `tensors` that belong to the network (see [`is_network_tensor`]).
pub fn network_tensors(tensors: NamedTensors) -> NamedTensors {
    tensors.into_iter().filter(|(n, _)| is_network_tensor(n)).collect()
}

/// The `format` values of search artefacts (src/search.rs): weight-sharing supernets and
/// controllers, not trained networks.
const SEARCH_FORMATS: [&str; 3] = ["cnas-search-checkpoint", "cnas-supernet", "cnas-controllers"];

/// Refuses a search artefact where a trained network is expected (eval, predict, export).
pub fn refuse_search_artefacts(
    path: &Path,
    metadata: &BTreeMap<String, String>,
    tensors: &NamedTensors,
) -> Result<()> {
    let format = metadata.get("format").map(String::as_str).unwrap_or("");
    // A search checkpoint keeps its groups as `supernet/...`, `controller/...`.
    let grouped = tensors.iter().any(|(n, _)| n.starts_with("supernet/") || n.starts_with("controller/"));
    // A bare supernet state_dict (cnas's, DARTS's or the released CNAS code's) has a list of
    // candidate ops on every edge: `cells.C._ops.E._ops.K.…`, where a trained network has
    // `cells.C._ops.K.…`.
    let candidates = tensors.iter().any(|(n, _)| is_supernet_name(network_name(n)));
    if SEARCH_FORMATS.contains(&format) || grouped || candidates {
        return Err(Error::bad_file(
            path,
            "is a search supernet (or its controllers), not a trained network (see cnas train)",
        ));
    }
    Ok(())
}

/// True for `cells.C._ops.E._ops.K.…`: a candidate operation on a supernet's edge.
fn is_supernet_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let number = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    parts.next() == Some("cells")
        && number(parts.next())
        && parts.next() == Some("_ops")
        && number(parts.next())
        && parts.next() == Some("_ops")
        && number(parts.next())
}

/// The network a cnas weights file describes in its metadata, if it does.
pub fn network_from_metadata(
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<Option<crate::model::NetworkConfig>> {
    match metadata.get("network") {
        None => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| Error::bad_file(path, format!("bad network description in its metadata: {e}"))),
    }
}

/// The name a tensor has in the network: DataParallel's `module.` prefix removed.
fn network_name(name: &str) -> &str {
    name.strip_prefix("module.").unwrap_or(name)
}

/// Reads a weights file and builds the trained network it holds, on `device`: what `cnas eval`,
/// `cnas predict` and `cnas export` share. Search artefacts (supernets, controllers, search
/// checkpoints) are refused. `choose` gets the network the file describes (cnas's own files;
/// `None` for a plain `state_dict`) and returns the one to build (the user's options may
/// override it). The auxiliary head is built and loaded when the file has one and
/// `keep_auxiliary` is set; otherwise its tensors are left out. Weights that do not fit are
/// the user's error, naming the file (and, when the file did not say which network it holds,
/// the options that do).
pub fn open_network(
    path: &Path,
    device: tch::Device,
    keep_auxiliary: bool,
    choose: impl FnOnce(Option<crate::model::NetworkConfig>) -> Result<crate::model::NetworkConfig>,
) -> Result<OpenedNetwork> {
    let metadata = read_metadata(path)?.unwrap_or_default();
    let tensors = read(path)?;
    refuse_search_artefacts(path, &metadata, &tensors)?;
    let described = network_from_metadata(path, &metadata)?;
    let guessed = described.is_none();
    let mut config = choose(described)?;
    config.auxiliary = keep_auxiliary && has_auxiliary(&tensors);
    let tensors: NamedTensors = if config.auxiliary {
        tensors
    } else {
        tensors.into_iter().filter(|(n, _)| !network_name(n).starts_with("auxiliary_head.")).collect()
    };
    let vs = nn::VarStore::new(device);
    let network = crate::model::Network::new(&vs.root(), config)?;
    load_into(&vs, &tensors).map_err(|e| match e {
        Error::WeightMismatch(m) if guessed => Error::bad_file(
            path,
            format!(
                "{m} (the file does not say which network it holds: give --arch, --dataset, \
                 --init-channels, --layers and --classes)"
            ),
        ),
        Error::WeightMismatch(m) => Error::bad_file(path, m),
        other => other,
    })?;
    Ok(OpenedNetwork { vs, network, tensors })
}

/// What [`open_network`] gives: the network, the store of its variables, and the file's tensors
/// it was loaded from (those of the auxiliary head left out unless it was kept).
pub struct OpenedNetwork {
    pub vs: nn::VarStore,
    pub network: crate::model::Network,
    pub tensors: NamedTensors,
}

/// True when the weights carry an auxiliary head, so the network to load them into needs one.
pub fn has_auxiliary(tensors: &NamedTensors) -> bool {
    tensors.iter().any(|(n, _)| network_name(n).starts_with("auxiliary_head."))
}

/// Copies `tensors` into the variables of `vs`, matching by name. Refuses (and changes
/// nothing) unless every variable gets a tensor of its exact shape and no tensor is left over.
pub fn load_into(vs: &nn::VarStore, tensors: &NamedTensors) -> Result<LoadReport> {
    let mut variables: HashMap<String, Tensor> = vs.variables();
    let mut report = LoadReport::default();
    let mut matched = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        if !is_network_tensor(name) {
            report.ignored += 1;
            continue;
        }
        let name = network_name(name);
        if name.ends_with("num_batches_tracked") {
            report.ignored += 1;
            continue;
        }
        match variables.remove(name) {
            None => report.unexpected.push(name.to_string()),
            Some(var) if var.size() != t.size() => {
                report.mismatched.push((name.to_string(), t.size(), var.size()))
            }
            Some(var) => matched.push((var, t)),
        }
    }
    report.missing = variables.into_keys().collect();
    report.missing.sort();
    if !report.is_exact() {
        return Err(Error::WeightMismatch(format!("weights do not fit this network: {}", report.describe())));
    }
    tch::no_grad(|| {
        for (mut var, t) in matched {
            var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
        }
    });
    report.loaded = tensors.len() - report.ignored;
    Ok(report)
}

/// Reads cnas metadata (`__metadata__` of a safetensors file); None for other files.
pub fn read_metadata(path: &Path) -> Result<Option<BTreeMap<String, String>>> {
    if sniff(path)? != Format::Safetensors {
        return Ok(None);
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(Error::bad_file(path, "safetensors header larger than 100 MiB"));
    }
    // Checked before the header's buffer is made: the length is the file's word.
    if len > file_len.saturating_sub(8) {
        return Err(Error::bad_file(
            path,
            format!(
                "truncated safetensors header: {len} bytes announced, {} in the file",
                file_len.saturating_sub(8)
            ),
        ));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::bad_file(path, format!("truncated safetensors header: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::bad_file(path, format!("corrupt safetensors header: {e}")))?;
    Ok(header.get("__metadata__").and_then(|m| serde_json::from_value(m.clone()).ok()))
}

/// Writes the variables of `vs` (sorted by name) as safetensors with `metadata`, atomically:
/// a temporary file beside the target, then a rename, so a crash never leaves half a file.
pub fn save(vs: &nn::VarStore, path: &Path, metadata: BTreeMap<String, String>) -> Result<()> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    save_tensors(&variables, path, metadata)
}

/// [`save`] for any named tensors (moved to the CPU as f32 or i64).
pub fn save_tensors(
    tensors: &[(String, Tensor)],
    path: &Path,
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    crate::util::write_atomic(path, &encode(tensors, metadata)?)
}

/// Named tensors and metadata as the bytes of a safetensors file.
pub fn encode(tensors: &[(String, Tensor)], metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorBytes)> =
        tensors.iter().map(|(n, t)| Ok((n.clone(), TensorBytes::new(t)?))).collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::BadOption(format!("cannot serialise weights: {e}")))
}

/// A tensor's raw little-endian bytes, as safetensors wants them.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl TensorBytes {
    fn new(t: &Tensor) -> Result<Self> {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let flat = t.flatten(0, -1);
        let (dtype, data) = match t.kind() {
            Kind::Int64 => {
                let v: Vec<i64> = Vec::try_from(&flat)?;
                (safetensors::Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
            _ => {
                let v: Vec<f32> = Vec::try_from(&flat.to_kind(Kind::Float))?;
                (safetensors::Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
            }
        };
        Ok(TensorBytes { dtype, shape, data })
    }
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}
