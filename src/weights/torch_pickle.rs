//! The pickles of `torch.save` files, read safely: candle's pickle machine builds the objects,
//! but only after a scan of the opcodes has bounded what it would build (a string's length by
//! the bytes present, the nesting depth, the objects memo copies make), since a few bytes of a
//! hostile pickle could otherwise ask for gigabytes or nest deep enough to overflow the stack.
//! Tensors are then described from the objects without trusting their shapes: a view must lie
//! inside the bytes its storage has in the file before any tensor is made.
use std::collections::HashMap;
use std::io::Cursor;

use candle_core::pickle::{Object, Stack};
use tch::{Kind, Tensor};

/// Deeper than any `state_dict` or checkpoint (about 10), shallow enough for the recursive
/// clone, comparison and drop of candle's objects.
const MAX_DEPTH: u32 = 100;

/// What the scan tracks of every object: how deep it nests and how many objects it holds.
#[derive(Clone, Copy)]
struct Extent {
    depth: u32,
    objects: u64,
    is_mark: bool,
}

const LEAF: Extent = Extent { depth: 1, objects: 1, is_mark: false };

/// An object holding `bytes` of text, counted in objects' worth of memory (about 56 bytes
/// each), so that copying long strings through the memo is bounded too.
fn text(bytes: usize) -> Extent {
    Extent { objects: 1 + bytes as u64 / 56, ..LEAF }
}

/// A container of `items`.
fn holding(items: &[Extent]) -> Extent {
    let depth = items.iter().map(|e| e.depth).max().unwrap_or(0) + 1;
    let objects = items.iter().fold(1u64, |n, e| n.saturating_add(e.objects));
    Extent { depth, objects, is_mark: false }
}

/// The opcode-level twin of candle's `Stack`: it follows the same operations on extents only.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Extent>,
    memo: HashMap<u32, Extent>,
    /// Objects built or copied so far, and the most allowed.
    objects: u64,
    budget: u64,
}

impl<'a> Scan<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let bytes = self.bytes.get(self.pos..).and_then(|rest| rest.get(..n)).ok_or("truncated pickle")?;
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Steps over a line; its length.
    fn line(&mut self) -> usize {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let n = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
        self.pos += n;
        n
    }

    fn pop(&mut self) -> Result<Extent, String> {
        self.stack.pop().ok_or_else(|| "pickle pops an empty stack".to_string())
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Extent>, String> {
        let at = self.stack.len().checked_sub(n).ok_or("pickle pops an empty stack")?;
        Ok(self.stack.split_off(at))
    }

    fn pop_to_mark(&mut self) -> Result<Vec<Extent>, String> {
        let mark = self.stack.iter().rposition(|e| e.is_mark).ok_or("pickle has no mark to pop to")?;
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items)
    }

    /// Counts `objects` more built or copied.
    fn charge(&mut self, objects: u64) -> Result<(), String> {
        self.objects = self.objects.saturating_add(objects);
        if self.objects > self.budget {
            return Err(format!(
                "pickle expands to more than {} objects for its {} bytes",
                self.budget,
                self.bytes.len()
            ));
        }
        Ok(())
    }

    fn push(&mut self, e: Extent) -> Result<(), String> {
        if e.depth > MAX_DEPTH {
            return Err(format!("pickle nests objects more than {MAX_DEPTH} deep"));
        }
        self.charge(e.objects)?;
        self.stack.push(e);
        Ok(())
    }

    /// Puts `items` into the container on top of the stack.
    fn add_to_top(&mut self, items: &[Extent]) -> Result<(), String> {
        let top = self.pop()?;
        let mut grown = holding(items);
        grown.depth = grown.depth.max(top.depth);
        grown.objects = grown.objects.saturating_add(top.objects);
        self.push(grown)
    }

    fn memo_get(&mut self, id: u32) -> Result<(), String> {
        let e = *self.memo.get(&id).ok_or_else(|| format!("pickle reads memo {id}, never stored"))?;
        self.push(e)
    }

    fn memo_put(&mut self, id: u32) -> Result<(), String> {
        let top = *self.stack.last().ok_or("pickle memoises from an empty stack")?;
        // Candle copies the object into the memo: count the copy.
        self.charge(top.objects)?;
        self.memo.insert(id, top);
        Ok(())
    }

    /// Follows one opcode; true at STOP.
    fn step(&mut self) -> Result<bool, String> {
        let op = self.take(1)?[0];
        match op {
            0x80 => {
                self.take(1)?;
            }
            b'c' => {
                let len = self.line() + self.line();
                self.push(text(len))?;
            }
            b'K' | b'M' | b'J' | b'G' => {
                self.take(match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                })?;
                self.push(LEAF)?;
            }
            b'X' => {
                let len = self.u32()? as usize;
                self.take(len)?;
                self.push(text(len))?;
            }
            0x8a => {
                let n = self.take(1)?[0] as usize;
                if n > 8 {
                    return Err(format!("pickle holds a {n}-byte integer (at most 8 are read)"));
                }
                self.take(n)?;
                self.push(LEAF)?;
            }
            b')' | b']' | b'}' | b'd' | b'N' | 0x88 | 0x89 => self.push(LEAF)?,
            b'(' => self.stack.push(Extent { depth: 0, objects: 0, is_mark: true }),
            b't' => {
                let items = self.pop_to_mark()?;
                self.push(holding(&items))?;
            }
            0x85..=0x87 | b'Q' | b'R' | 0x81 | b'b' => {
                let n = match op {
                    0x86 | b'R' | 0x81 | b'b' => 2,
                    0x87 => 3,
                    _ => 1,
                };
                let items = self.pop_n(n)?;
                self.push(holding(&items))?;
            }
            b'a' | b's' => {
                let items = self.pop_n(if op == b'a' { 1 } else { 2 })?;
                self.add_to_top(&items)?;
            }
            b'e' | b'u' => {
                let items = self.pop_to_mark()?;
                self.add_to_top(&items)?;
            }
            b'h' => {
                let id = self.take(1)?[0] as u32;
                self.memo_get(id)?;
            }
            b'j' => {
                let id = self.u32()?;
                self.memo_get(id)?;
            }
            b'q' => {
                let id = self.take(1)?[0] as u32;
                self.memo_put(id)?;
            }
            b'r' => {
                let id = self.u32()?;
                self.memo_put(id)?;
            }
            b'.' => return Ok(true),
            other => return Err(format!("unknown pickle opcode {other:#04x}")),
        }
        Ok(false)
    }
}

/// Reads the pickle at the start of `bytes`: the object and the bytes it took.
pub(super) fn load(bytes: &[u8]) -> Result<(Object, usize), String> {
    // Real files build and copy less than one object per byte; 4 per byte leaves room and
    // bounds the memory to a few hundred times the file's size.
    let budget = 4 * bytes.len() as u64 + (1 << 16);
    let mut scan = Scan { bytes, pos: 0, stack: Vec::new(), memo: HashMap::new(), objects: 0, budget };
    while !scan.step()? {}
    let mut reader = Cursor::new(&bytes[..scan.pos]);
    let mut stack = Stack::empty();
    let object =
        stack.read_loop(&mut reader).and_then(|_| stack.finalize()).map_err(|e| candle_message(&e))?;
    Ok((object, scan.pos))
}

/// candle's message, without the backtrace candle captures under `RUST_BACKTRACE`: printing
/// it would symbolise the whole program (a second and some 90 MB).
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => brief(&other.to_string()),
    }
}

/// The first line of `s`, at most 160 characters (candle's messages may print whole objects).
pub(super) fn brief(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    match line.char_indices().nth(160) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// The element kind of a typed storage class, as the pickles name them.
pub(super) fn storage_kind(class_name: &str) -> Option<Kind> {
    Some(match class_name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// A tensor as a pickle describes it: a view of a storage.
pub(super) struct StoredTensor {
    pub key: String,
    pub kind: Kind,
    size: Vec<i64>,
    stride: Vec<i64>,
    offset: i64,
}

/// The tensor `value` rebuilds, if it is one (a plain tensor, a Parameter, or a tensor subclass).
pub(super) fn stored_tensor(value: &Object) -> Option<StoredTensor> {
    match value {
        Object::Reduce { callable, args } => rebuilt(callable, args),
        _ => None,
    }
}

fn rebuilt(callable: &Object, args: &Object) -> Option<StoredTensor> {
    let (Object::Class { module_name, class_name }, Object::Tuple(args)) = (callable, args) else {
        return None;
    };
    match (module_name.as_str(), class_name.as_str(), args.as_slice()) {
        ("torch._utils", "_rebuild_tensor_v2", [storage, offset, size, stride, ..]) => {
            let (kind, key) = storage_of(storage)?;
            let size = non_negatives(size)?;
            let stride = non_negatives(stride)?;
            let offset = non_negative(offset)?;
            (size.len() == stride.len()).then_some(StoredTensor { key, kind, size, stride, offset })
        }
        // A Parameter: (tensor, requires_grad, hooks).
        ("torch._utils", "_rebuild_parameter", [tensor, ..]) => stored_tensor(tensor),
        // A tensor subclass: (function, type, the function's arguments, state).
        ("torch._tensor", "_rebuild_from_type_v2", [function, _, inner, ..]) => rebuilt(function, inner),
        _ => None,
    }
}

/// `('storage', StorageClass, key, location, numel)` behind a persistent id.
fn storage_of(storage: &Object) -> Option<(Kind, String)> {
    let Object::PersistentLoad(id) = storage else { return None };
    let Object::Tuple(parts) = id.as_ref() else { return None };
    match parts.as_slice() {
        [Object::Unicode(tag), Object::Class { class_name, .. }, Object::Unicode(key), ..]
            if tag == "storage" =>
        {
            Some((storage_kind(class_name)?, key.clone()))
        }
        _ => None,
    }
}

fn non_negative(o: &Object) -> Option<i64> {
    match *o {
        Object::Int(n) if n >= 0 => Some(n as i64),
        Object::Long(n) if n >= 0 => Some(n),
        _ => None,
    }
}

fn non_negatives(o: &Object) -> Option<Vec<i64>> {
    match o {
        Object::Tuple(items) => items.iter().map(non_negative).collect(),
        _ => None,
    }
}

impl StoredTensor {
    /// Elements the view holds, and how many storage elements it needs (one past the last it
    /// reaches); None when they overflow.
    fn extent(&self) -> Option<(u64, u64)> {
        let numel = self.size.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64))?;
        if numel == 0 {
            return Some((0, 0));
        }
        let last = self.size.iter().zip(&self.stride).try_fold(self.offset as u64, |end, (&d, &s)| {
            end.checked_add((d as u64 - 1).checked_mul(s as u64)?)
        })?;
        Some((numel, last.checked_add(1)?))
    }

    /// The tensor, copied out of its storage's `data` (elements of `kind`); floating point as
    /// f32. Refused unless the view lies inside `data` and holds no more elements than it.
    pub(super) fn to_tensor(&self, kind: Kind, data: &[u8]) -> Result<Tensor, String> {
        let available = (data.len() / kind.elt_size_in_bytes()) as u64;
        match self.extent() {
            Some((numel, reach)) if numel <= available && reach <= available => {}
            _ => {
                return Err(format!(
                    "shape {:?} (strides {:?}, offset {}) reaches past the {available} elements stored",
                    self.size, self.stride, self.offset
                ))
            }
        }
        let stored = &data[..available as usize * kind.elt_size_in_bytes()];
        let storage =
            Tensor::f_from_data_size(stored, &[available as i64], kind).map_err(|e| brief(&e.to_string()))?;
        let t = storage
            .f_as_strided(&self.size, &self.stride, self.offset)
            .map_err(|e| brief(&e.to_string()))?
            .contiguous();
        Ok(match kind {
            Kind::Int64 | Kind::Uint8 => t,
            _ => t.to_kind(Kind::Float),
        })
    }
}
