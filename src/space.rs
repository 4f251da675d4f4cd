//! The search space: operation primitives, cells and genotypes.
//!
//! A cell has two input nodes (0 = output of the cell before last, 1 = output of the last
//! cell) and `n` intermediate nodes numbered 2..n+2; each intermediate node sums exactly two
//! edges `(op, from, to)` with `from < to`; the cell's output concatenates the nodes in
//! `concat` along channels. A [`Genotype`] is one normal and one reduction cell;
//! [`Genotype::validate`] checks all of the above and names the first defect it finds.
//!
//! # JSON format
//!
//! cnas writes genotypes in this canonical form (operation names, explicit target nodes,
//! edges in the order written, which is kept on reading and writing):
//!
//! ```json
//! {
//!   "normal": {
//!     "edges": [["dil_conv_3x3", 1, 2], ["sep_conv_3x3", 0, 2],
//!               ["sep_conv_3x3", 0, 3], ["skip_connect", 1, 3],
//!               ["sep_conv_3x3", 1, 4], ["max_pool_3x3", 3, 4],
//!               ["sep_conv_3x3", 2, 5], ["sep_conv_3x3", 4, 5]],
//!     "concat": [2, 3, 4, 5]
//!   },
//!   "reduce": {
//!     "edges": [["sep_conv_3x3", 0, 2], ["skip_connect", 1, 2],
//!               ["dil_conv_5x5", 2, 3], ["skip_connect", 1, 3],
//!               ["dil_conv_3x3", 2, 4], ["sep_conv_3x3", 1, 4],
//!               ["sep_conv_5x5", 0, 5], ["sep_conv_3x3", 3, 5]],
//!     "concat": [2, 3, 4, 5]
//!   }
//! }
//! ```
//!
//! Reading ([`Genotype::from_json_str`], and serde's `Deserialize`) also accepts:
//!
//! * **ordinal operations**: an edge's op may be an integer index into [`Primitive::DARTS`]
//!   (`sep_conv_3x3`=0, `sep_conv_5x5`=1, `max_pool_3x3`=2, `avg_pool_3x3`=3, `none`=4,
//!   `skip_connect`=5, `dil_conv_3x3`=6, `dil_conv_5x5`=7), e.g. `[6, 1, 2]`; or, when the
//!   top level holds `"primitives": ["none", "max_pool_3x3", ...]`, an index into that list;
//! * **edge objects**: `{"op": "dil_conv_3x3", "from": 1, "to": 2}`;
//! * **the DARTS layout**: `{"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ...],
//!   "normal_concat": [2, 3, 4, 5], "reduce": [...], "reduce_concat": [...]}`, where the target
//!   node is implied: edges 2k and 2k+1 feed node k+2 (an item may still give it explicitly,
//!   as `[op, from, to]`).
//!
//! The top level may also carry `"name"` and `"source"` (ignored); any other key is an error.
//! [`Genotype::to_json_ordinal`] writes the canonical form with DARTS indices instead of names.
//!
//! # DARTS text form
//!
//! [`Genotype::from_darts_str`] reads the namedtuple the DARTS/CNAS Python code prints,
//! `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...],
//! reduce_concat=[2, 3, 4, 5])`, and [`Genotype::to_darts_string`] writes it.
//! [`Genotype::parse_any`] takes either form. [`published`] returns the genotypes of the
//! papers cnas compares against, by name.
use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};

/// Every operation an edge can carry. The first eight, in this order, are the DARTS set that
/// CNAS searches ([`Primitive::DARTS`]); the rest are the wider set a user may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Primitive {
    SepConv3x3,
    SepConv5x5,
    MaxPool3x3,
    AvgPool3x3,
    None,
    SkipConnect,
    DilConv3x3,
    DilConv5x5,
    MaxPool5x5,
    MaxPool7x7,
    SepConv7x7,
    Conv1x1,
    Conv3x3,
    Conv5x5,
    Conv7x1_1x7,
    Conv1x3_3x1,
}

impl Primitive {
    /// The DARTS operation set in the order CNAS (and DARTS) index it.
    pub const DARTS: [Primitive; 8] = [
        Primitive::SepConv3x3,
        Primitive::SepConv5x5,
        Primitive::MaxPool3x3,
        Primitive::AvgPool3x3,
        Primitive::None,
        Primitive::SkipConnect,
        Primitive::DilConv3x3,
        Primitive::DilConv5x5,
    ];

    /// Every primitive cnas knows: the DARTS set first, then the wider set.
    pub const ALL: [Primitive; 16] = [
        Primitive::SepConv3x3,
        Primitive::SepConv5x5,
        Primitive::MaxPool3x3,
        Primitive::AvgPool3x3,
        Primitive::None,
        Primitive::SkipConnect,
        Primitive::DilConv3x3,
        Primitive::DilConv5x5,
        Primitive::MaxPool5x5,
        Primitive::MaxPool7x7,
        Primitive::SepConv7x7,
        Primitive::Conv1x1,
        Primitive::Conv3x3,
        Primitive::Conv5x5,
        Primitive::Conv7x1_1x7,
        Primitive::Conv1x3_3x1,
    ];

    /// The name used in genotypes (and in the PyTorch code's OPS dictionary).
    pub fn name(self) -> &'static str {
        match self {
            Primitive::SepConv3x3 => "sep_conv_3x3",
            Primitive::SepConv5x5 => "sep_conv_5x5",
            Primitive::MaxPool3x3 => "max_pool_3x3",
            Primitive::AvgPool3x3 => "avg_pool_3x3",
            Primitive::None => "none",
            Primitive::SkipConnect => "skip_connect",
            Primitive::DilConv3x3 => "dil_conv_3x3",
            Primitive::DilConv5x5 => "dil_conv_5x5",
            Primitive::MaxPool5x5 => "max_pool_5x5",
            Primitive::MaxPool7x7 => "max_pool_7x7",
            Primitive::SepConv7x7 => "sep_conv_7x7",
            Primitive::Conv1x1 => "conv_1x1",
            Primitive::Conv3x3 => "conv_3x3",
            Primitive::Conv5x5 => "conv_5x5",
            Primitive::Conv7x1_1x7 => "conv_7x1_1x7",
            Primitive::Conv1x3_3x1 => "conv_1x3_3x1",
        }
    }

    pub fn from_name(name: &str) -> Option<Primitive> {
        Primitive::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True for operations that carry weights (convolutions; a stride-2 skip is handled by the
    /// network, not here).
    pub fn is_conv(self) -> bool {
        !matches!(
            self,
            Primitive::MaxPool3x3
                | Primitive::AvgPool3x3
                | Primitive::None
                | Primitive::SkipConnect
                | Primitive::MaxPool5x5
                | Primitive::MaxPool7x7
        )
    }
}

impl std::fmt::Display for Primitive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One edge of a cell: `op` applied to node `from`, summed into node `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub op: Primitive,
    pub from: usize,
    pub to: usize,
}

/// A cell: its edges (as written; order is kept) and the nodes its output concatenates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub edges: Vec<Edge>,
    pub concat: Vec<usize>,
}

impl Cell {
    /// Number of intermediate nodes (two edges each).
    pub fn num_nodes(&self) -> usize {
        self.edges.len() / 2
    }

    /// Edges in the order the network evaluates and numbers them (`_ops.k`): node by node
    /// (stable in `to`), keeping the written order within a node. For genotypes written node by
    /// node, as all published ones are, this is the written order.
    pub fn edges_by_node(&self) -> Vec<Edge> {
        let mut edges = self.edges.clone();
        edges.sort_by_key(|e| e.to);
        edges
    }
}

/// A complete architecture: one normal and one reduction cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genotype {
    pub normal: Cell,
    pub reduce: Cell,
}

/// Everything that can be wrong with a genotype or its description. Every message is one line
/// that names the defect (and, for a cell, the cell and edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// A structural defect found by [`Genotype::validate`] / [`Cell::validate`], or a genotype
    /// that cannot be written in the form asked for.
    #[error("{0}")]
    Invalid(String),
    /// An operation name that is not one of [`Primitive::ALL`].
    #[error("unknown operation '{name}' (valid: {valid})")]
    UnknownPrimitive { name: String, valid: String },
    /// JSON that does not parse, or does not describe a genotype.
    #[error("invalid genotype JSON: {0}")]
    Json(String),
    /// DARTS `Genotype(...)` text that does not parse or does not describe a genotype.
    #[error("invalid DARTS genotype text: {0}")]
    DartsText(String),
}

fn names_of(ops: &[Primitive]) -> String {
    ops.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
}

impl Primitive {
    /// Index of this operation in [`Primitive::DARTS`] (the ordinal JSON form), if it has one.
    pub fn darts_index(self) -> Option<usize> {
        Primitive::DARTS.iter().position(|&p| p == self)
    }

    /// The operation at `index` in [`Primitive::DARTS`].
    pub fn from_darts_index(index: usize) -> Option<Primitive> {
        Primitive::DARTS.get(index).copied()
    }
}

impl FromStr for Primitive {
    type Err = SpaceError;

    /// Parses an operation name (`sep_conv_3x3`); surrounding spaces and upper case are
    /// tolerated. The error lists every valid name.
    fn from_str(s: &str) -> Result<Self, SpaceError> {
        let t = s.trim();
        Primitive::from_name(t).or_else(|| Primitive::from_name(&t.to_ascii_lowercase())).ok_or_else(|| {
            SpaceError::UnknownPrimitive { name: s.to_string(), valid: names_of(&Primitive::ALL) }
        })
    }
}

impl Serialize for Primitive {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Primitive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl Edge {
    pub const fn new(op: Primitive, from: usize, to: usize) -> Edge {
        Edge { op, from, to }
    }

    /// `edge 3 (sep_conv_3x3, 4 -> 3)` prefixed by the cell: the context of every edge message.
    fn context(&self, which: &str, index: usize) -> String {
        format!("{which} cell, edge {index} ({}, {} -> {})", self.op, self.from, self.to)
    }
}

/// `(op, from, to)`.
impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {})", self.op, self.from, self.to)
    }
}

impl Cell {
    /// A cell from the DARTS list of `(op, from)` pairs, where edges 2k and 2k+1 feed node k+2.
    pub fn from_darts(ops: &[(Primitive, usize)], concat: &[usize]) -> Cell {
        Cell {
            edges: ops.iter().enumerate().map(|(i, &(op, from))| Edge::new(op, from, 2 + i / 2)).collect(),
            concat: concat.to_vec(),
        }
    }

    /// True if some edge carries `p`.
    pub fn uses(&self, p: Primitive) -> bool {
        self.edges.iter().any(|e| e.op == p)
    }

    /// True when the edges are written as the DARTS list implies: edges 2k and 2k+1 feed node
    /// k+2 (so the list of `(op, from)` pairs says everything).
    pub fn is_darts_ordered(&self) -> bool {
        self.edges.iter().enumerate().all(|(i, e)| e.to == 2 + i / 2)
    }

    /// Checks the cell's structure, and, with `allowed`, that every op is in that set.
    /// `which` names the cell in messages (`"normal"` gives `normal cell, edge 3 (...): ...`);
    /// edges are numbered from 0 in the order written. Returns the first defect found.
    pub fn validate(&self, which: &str, allowed: Option<&[Primitive]>) -> Result<(), SpaceError> {
        let bad = |msg: String| Err(SpaceError::Invalid(msg));
        if self.edges.is_empty() {
            return bad(format!("{which} cell has no edges"));
        }
        if self.edges.len() % 2 != 0 {
            return bad(format!(
                "{which} cell has {} edges, an odd number (every intermediate node takes exactly two)",
                self.edges.len()
            ));
        }
        let last = self.num_nodes() + 1;
        for (i, e) in self.edges.iter().enumerate() {
            let ctx = e.context(which, i);
            if e.to < 2 {
                return bad(format!(
                    "{ctx}: to names input node {}; edges must feed an intermediate node (2..={last})",
                    e.to
                ));
            }
            if e.from >= e.to {
                return bad(format!("{ctx}: from must be smaller than to"));
            }
            if e.to > last {
                return bad(format!(
                    "{ctx}: to is beyond the cell's last node {last} ({} edges make {} intermediate nodes, 2..={last})",
                    self.edges.len(),
                    self.num_nodes()
                ));
            }
            if let Some(allowed) = allowed {
                if !allowed.contains(&e.op) {
                    return bad(format!(
                        "{ctx}: operation {} is not allowed (allowed: {})",
                        e.op,
                        names_of(allowed)
                    ));
                }
            }
        }
        for node in 2..=last {
            let count = self.edges.iter().filter(|e| e.to == node).count();
            if count != 2 {
                let s = if count == 1 { "" } else { "s" };
                return bad(format!(
                    "{which} cell: node {node} has {count} incoming edge{s}, expected exactly 2"
                ));
            }
        }
        if self.concat.is_empty() {
            return bad(format!("{which} cell: concat is empty"));
        }
        for (i, &node) in self.concat.iter().enumerate() {
            if self.concat[..i].contains(&node) {
                return bad(format!("{which} cell: concat lists node {node} more than once"));
            }
            if node < 2 {
                return bad(format!(
                    "{which} cell: concat names input node {node}; only intermediate nodes (2..={last}) can be concatenated"
                ));
            }
            if node > last {
                return bad(format!(
                    "{which} cell: concat names node {node}, which does not exist (intermediate nodes are 2..={last})"
                ));
            }
        }
        Ok(())
    }
}

/// `(op, from, to) (op, from, to) ... concat [2, 3, 4, 5]`.
impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.edges {
            write!(f, "{e} ")?;
        }
        write!(f, "concat {:?}", self.concat)
    }
}

/// The canonical JSON object `{"edges": [[op, from, to], ...], "concat": [...]}`.
impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let edges: Vec<(&str, usize, usize)> =
            self.edges.iter().map(|e| (e.op.name(), e.from, e.to)).collect();
        let mut s = serializer.serialize_struct("Cell", 2)?;
        s.serialize_field("edges", &edges)?;
        s.serialize_field("concat", &self.concat)?;
        s.end()
    }
}

/// The canonical JSON form (see the module documentation).
impl Serialize for Genotype {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Genotype", 2)?;
        s.serialize_field("normal", &self.normal)?;
        s.serialize_field("reduce", &self.reduce)?;
        s.end()
    }
}

/// Any JSON form [`Genotype::from_json_str`] reads; the genotype is validated.
impl<'de> Deserialize<'de> for Genotype {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Genotype::from_json_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Two lines: `normal: (op, from, to) ... concat [...]` and `reduce: ...`.
impl fmt::Display for Genotype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "normal: {}\nreduce: {}", self.normal, self.reduce)
    }
}

impl Genotype {
    /// Validates both cells (see [`Cell::validate`]); with `allowed`, every op must be in it.
    pub fn validate(&self, allowed: Option<&[Primitive]>) -> Result<(), SpaceError> {
        self.normal.validate("normal", allowed)?;
        self.reduce.validate("reduce", allowed)
    }

    /// True if either cell uses `p`.
    pub fn uses(&self, p: Primitive) -> bool {
        self.normal.uses(p) || self.reduce.uses(p)
    }

    /// Reads any of the JSON forms described in the module documentation and validates the
    /// structure. Malformed JSON gives `invalid genotype JSON: <message with line and column>`.
    pub fn from_json_str(text: &str) -> Result<Genotype, SpaceError> {
        let value: Value = serde_json::from_str(text).map_err(|e| SpaceError::Json(e.to_string()))?;
        Genotype::from_json_value(&value)
    }

    /// [`Genotype::from_json_str`] on an already parsed value.
    pub fn from_json_value(value: &Value) -> Result<Genotype, SpaceError> {
        let genotype = json_read::genotype(value)?;
        genotype.validate(None)?;
        Ok(genotype)
    }

    /// The canonical named JSON form.
    pub fn to_json(&self) -> Value {
        json!({ "normal": &self.normal, "reduce": &self.reduce })
    }

    /// The canonical form with each op written as its index in [`Primitive::DARTS`]; an error
    /// names the first op outside that set.
    pub fn to_json_ordinal(&self) -> Result<Value, SpaceError> {
        let cell = |which: &str, cell: &Cell| -> Result<Value, SpaceError> {
            let mut edges = Vec::with_capacity(cell.edges.len());
            for (i, e) in cell.edges.iter().enumerate() {
                let index = e.op.darts_index().ok_or_else(|| {
                    SpaceError::Invalid(format!(
                        "{}: {} is not in the DARTS operation set, so it has no ordinal index (DARTS set: {})",
                        e.context(which, i),
                        e.op,
                        names_of(&Primitive::DARTS)
                    ))
                })?;
                edges.push(json!([index, e.from, e.to]));
            }
            Ok(json!({ "edges": edges, "concat": &cell.concat }))
        };
        Ok(json!({
            "normal": cell("normal", &self.normal)?,
            "reduce": cell("reduce", &self.reduce)?,
        }))
    }

    /// The canonical named JSON form as text, one edge per line (what cnas writes to files).
    pub fn to_json_pretty(&self) -> String {
        let cell = |name: &str, cell: &Cell, last: bool| {
            let edges: Vec<String> = cell
                .edges
                .iter()
                .map(|e| format!("      [\"{}\", {}, {}]", e.op.name(), e.from, e.to))
                .collect();
            let concat: Vec<String> = cell.concat.iter().map(|c| c.to_string()).collect();
            format!(
                "  \"{name}\": {{\n    \"edges\": [\n{}\n    ],\n    \"concat\": [{}]\n  }}{}\n",
                edges.join(",\n"),
                concat.join(", "),
                if last { "" } else { "," }
            )
        };
        format!("{{\n{}{}}}\n", cell("normal", &self.normal, false), cell("reduce", &self.reduce, true))
    }

    /// Reads the DARTS/CNAS Python text form (see the module documentation) and validates the
    /// structure. Whitespace, newlines, `#` comments, either quote, lists or tuples, and
    /// `range(a, b)` or a list for the concats are all accepted; so is a leading `name =`, a
    /// `module.Genotype(` prefix, per-node groups `[(('op', 0), ('op', 1)), ...]`, and explicit
    /// `('op', from, to)` triples.
    pub fn from_darts_str(text: &str) -> Result<Genotype, SpaceError> {
        let genotype = darts_text::parse(text)?;
        genotype.validate(None)?;
        Ok(genotype)
    }

    /// The DARTS Python text form. Cells written node by node (as all published ones are)
    /// give the exact DARTS `(op, from)` lists; a cell whose edges are out of node order but
    /// otherwise well formed is written node by node (the same network, as
    /// [`Cell::edges_by_node`] is the order it is built in); anything else is written as
    /// `(op, from, to)` triples, which [`Genotype::from_darts_str`] reads back.
    pub fn to_darts_string(&self) -> String {
        format!(
            "Genotype(normal={}, normal_concat={}, reduce={}, reduce_concat={})",
            darts_text::edges(&self.normal),
            darts_text::concat(&self.normal.concat),
            darts_text::edges(&self.reduce),
            darts_text::concat(&self.reduce.concat)
        )
    }

    /// JSON (when the first non-space character is `{`) or the DARTS text form, validated with
    /// `validate(None)`.
    pub fn parse_any(text: &str) -> Result<Genotype, SpaceError> {
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            return Err(SpaceError::Invalid(
                "empty genotype description (expected JSON or DARTS Genotype(...) text)".into(),
            ));
        }
        let genotype = if text.starts_with('{') {
            Genotype::from_json_str(text)?
        } else {
            Genotype::from_darts_str(text)?
        };
        genotype.validate(None)?;
        Ok(genotype)
    }
}

/// Interpreting a parsed JSON value as a genotype (structure only; validation follows).
mod json_read {
    use super::*;

    const TOP_KEYS: [&str; 7] =
        ["normal", "reduce", "normal_concat", "reduce_concat", "name", "primitives", "source"];

    fn err(msg: String) -> SpaceError {
        SpaceError::Json(msg)
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        }
    }

    /// The table ordinal ops index into, and how to name it in messages.
    struct Ordinals {
        table: Vec<Primitive>,
        from_file: bool,
    }

    pub(super) fn genotype(value: &Value) -> Result<Genotype, SpaceError> {
        let obj = value.as_object().ok_or_else(|| {
            err(format!("expected an object with \"normal\" and \"reduce\", found {}", kind(value)))
        })?;
        if let Some(key) = obj.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
            return Err(err(format!("unknown top-level key \"{key}\" (expected {})", TOP_KEYS.join(", "))));
        }
        let ordinals = match obj.get("primitives") {
            None => Ordinals { table: Primitive::DARTS.to_vec(), from_file: false },
            Some(Value::Array(items)) => {
                let mut table = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let name = item.as_str().ok_or_else(|| {
                        err(format!("primitives[{i}]: expected an operation name, found {}", kind(item)))
                    })?;
                    table.push(name.parse::<Primitive>().map_err(|e| err(format!("primitives[{i}]: {e}")))?);
                }
                Ordinals { table, from_file: true }
            }
            Some(other) => {
                return Err(err(format!(
                    "\"primitives\" must be a list of operation names, found {}",
                    kind(other)
                )))
            }
        };
        Ok(Genotype { normal: cell(obj, "normal", &ordinals)?, reduce: cell(obj, "reduce", &ordinals)? })
    }

    fn cell(obj: &Map<String, Value>, which: &str, ordinals: &Ordinals) -> Result<Cell, SpaceError> {
        let concat_key = format!("{which}_concat");
        match obj.get(which) {
            None => Err(err(format!("missing \"{which}\" cell"))),
            Some(Value::Object(cell)) => {
                if obj.contains_key(&concat_key) {
                    return Err(err(format!(
                        "\"{concat_key}\" belongs to the DARTS layout; with a \"{which}\" object, put \"concat\" inside it"
                    )));
                }
                if let Some(key) = cell.keys().find(|k| *k != "edges" && *k != "concat") {
                    return Err(err(format!(
                        "{which} cell: unknown key \"{key}\" (expected edges, concat)"
                    )));
                }
                let edges = cell
                    .get("edges")
                    .ok_or_else(|| err(format!("{which} cell: missing \"edges\"")))?;
                let edges = edges.as_array().ok_or_else(|| {
                    err(format!(
                        "{which} cell: \"edges\" must be a list, found {}",
                        kind(edges)
                    ))
                })?;
                let edges = edges
                    .iter()
                    .enumerate()
                    .map(|(i, e)| edge(e, which, i, None, ordinals))
                    .collect::<Result<Vec<_>, _>>()?;
                let concat = cell
                    .get("concat")
                    .ok_or_else(|| err(format!("{which} cell: missing \"concat\"")))?;
                Ok(Cell {
                    edges,
                    concat: concat_list(concat, &format!("{which} cell: \"concat\""))?,
                })
            }
            Some(Value::Array(items)) => {
                let edges = items
                    .iter()
                    .enumerate()
                    .map(|(i, e)| edge(e, which, i, Some(2 + i / 2), ordinals))
                    .collect::<Result<Vec<_>, _>>()?;
                let concat = obj.get(&concat_key).ok_or_else(|| {
                    err(format!(
                        "missing \"{concat_key}\" (a DARTS-layout \"{which}\" list needs it)"
                    ))
                })?;
                Ok(Cell {
                    edges,
                    concat: concat_list(concat, &format!("\"{concat_key}\""))?,
                })
            }
            Some(other) => Err(err(format!(
                "\"{which}\" must be a cell object {{\"edges\": [...], \"concat\": [...]}} or a DARTS list of [op, from] pairs, found {}",
                kind(other)
            ))),
        }
    }

    /// One edge; `implied` is the target node the DARTS layout gives it.
    fn edge(
        v: &Value,
        which: &str,
        i: usize,
        implied: Option<usize>,
        ordinals: &Ordinals,
    ) -> Result<Edge, SpaceError> {
        let ctx = format!("{which} cell, edge {i}");
        let expected = if implied.is_some() {
            "[op, from] or [op, from, to]"
        } else {
            "[op, from, to] or {\"op\", \"from\", \"to\"}"
        };
        let (op, from, to) = match v {
            Value::Array(a) if a.len() == 3 => (&a[0], &a[1], Some(&a[2])),
            Value::Array(a) if a.len() == 2 && implied.is_some() => (&a[0], &a[1], None),
            Value::Array(a) => {
                return Err(err(format!("{ctx}: expected {expected}, found a list of {} items", a.len())))
            }
            Value::Object(m) => {
                if let Some(key) = m.keys().find(|k| !["op", "from", "to"].contains(&k.as_str())) {
                    return Err(err(format!("{ctx}: unknown key \"{key}\" (expected op, from, to)")));
                }
                let get = |key: &str| m.get(key).ok_or_else(|| err(format!("{ctx}: missing \"{key}\"")));
                let to = match implied {
                    Some(_) => m.get("to"),
                    None => Some(get("to")?),
                };
                (get("op")?, get("from")?, to)
            }
            other => return Err(err(format!("{ctx}: expected {expected}, found {}", kind(other)))),
        };
        let op = operation(op, &ctx, ordinals)?;
        let from = index(from, &ctx, "from")?;
        let to = match (to, implied) {
            (Some(to), _) => index(to, &ctx, "to")?,
            (None, Some(implied)) => implied,
            (None, None) => unreachable!("edges without an implied target always carry one"),
        };
        Ok(Edge::new(op, from, to))
    }

    fn operation(v: &Value, ctx: &str, ordinals: &Ordinals) -> Result<Primitive, SpaceError> {
        match v {
            Value::String(name) => name.parse().map_err(|e| err(format!("{ctx}: {e}"))),
            Value::Number(n) => {
                let table = &ordinals.table;
                let which = if ordinals.from_file { "the \"primitives\" list" } else { "the DARTS order" };
                n.as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .and_then(|k| table.get(k).copied())
                    .ok_or_else(|| {
                        err(format!(
                            "{ctx}: operation index {n} is out of range (0..{} in {which}: {})",
                            table.len(),
                            names_of(table)
                        ))
                    })
            }
            other => {
                Err(err(format!("{ctx}: op must be an operation name or an index, found {}", kind(other))))
            }
        }
    }

    fn index(v: &Value, ctx: &str, field: &str) -> Result<usize, SpaceError> {
        v.as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .ok_or_else(|| err(format!("{ctx}: \"{field}\" must be a non-negative integer, found {v}")))
    }

    fn concat_list(v: &Value, ctx: &str) -> Result<Vec<usize>, SpaceError> {
        let items = v
            .as_array()
            .ok_or_else(|| err(format!("{ctx} must be a list of node numbers, found {}", kind(v))))?;
        items
            .iter()
            .map(|item| {
                item.as_u64()
                    .and_then(|k| usize::try_from(k).ok())
                    .ok_or_else(|| err(format!("{ctx} must hold non-negative integers, found {item}")))
            })
            .collect()
    }
}

/// Reading and writing the DARTS Python namedtuple text.
mod darts_text {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Ident(String),
        Int(i64),
        Str(String),
        Punct(char),
    }

    struct Token {
        tok: Tok,
        line: usize,
        col: usize,
    }

    fn err(msg: String) -> SpaceError {
        SpaceError::DartsText(msg)
    }

    fn lex(text: &str) -> Result<Vec<Token>, SpaceError> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
        while i < chars.len() {
            let c = chars[i];
            let (start_line, start_col) = (line, col);
            let push = |out: &mut Vec<Token>, tok| out.push(Token { tok, line: start_line, col: start_col });
            if c == '\n' {
                i += 1;
                line += 1;
                col = 1;
            } else if c.is_whitespace() {
                i += 1;
                col += 1;
            } else if c == '#' {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if "()[],=".contains(c) {
                push(&mut out, Tok::Punct(c));
                i += 1;
                col += 1;
            } else if c == '\'' || c == '"' {
                let mut s = String::new();
                i += 1;
                col += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => {
                            return Err(err(format!(
                                "line {start_line}, column {start_col}: unterminated string"
                            )))
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            col += 1;
                            break;
                        }
                        Some('\\') if i + 1 < chars.len() && chars[i + 1] != '\n' => {
                            s.push(chars[i + 1]);
                            i += 2;
                            col += 2;
                        }
                        Some(&other) => {
                            s.push(other);
                            i += 1;
                            col += 1;
                        }
                    }
                }
                push(&mut out, Tok::Str(s));
            } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
            {
                let begin = i;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[begin..i].iter().collect();
                col += i - begin;
                let n = digits.parse::<i64>().map_err(|_| {
                    err(format!("line {start_line}, column {start_col}: number {digits} is out of range"))
                })?;
                push(&mut out, Tok::Int(n));
            } else if c.is_alphabetic() || c == '_' {
                let begin = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    i += 1;
                }
                col += i - begin;
                push(&mut out, Tok::Ident(chars[begin..i].iter().collect()));
            } else {
                return Err(err(format!("line {line}, column {col}: unexpected character '{c}'")));
            }
        }
        Ok(out)
    }

    /// A Python literal, as far as genotypes need them (lists and tuples are both `Seq`).
    #[derive(Debug, Clone, PartialEq)]
    enum Py {
        Int(i64),
        Str(String),
        Seq(Vec<Py>),
        Range(i64, i64),
    }

    impl Py {
        fn describe(&self) -> String {
            match self {
                Py::Int(n) => format!("the number {n}"),
                Py::Str(s) => format!("the string '{s}'"),
                Py::Seq(items) => format!("a list of {} items", items.len()),
                Py::Range(a, b) => format!("range({a}, {b})"),
            }
        }
    }

    struct Parser {
        toks: Vec<Token>,
        pos: usize,
    }

    impl Parser {
        fn peek(&self) -> Option<&Tok> {
            self.toks.get(self.pos).map(|t| &t.tok)
        }

        fn peek_at(&self, ahead: usize) -> Option<&Tok> {
            self.toks.get(self.pos + ahead).map(|t| &t.tok)
        }

        /// An error located at the current token.
        fn fail(&self, msg: &str) -> SpaceError {
            match self.toks.get(self.pos) {
                Some(t) => err(format!("line {}, column {}: {msg}", t.line, t.col)),
                None => err(format!("at end of text: {msg}")),
            }
        }

        fn next(&mut self) -> Option<Tok> {
            let tok = self.toks.get(self.pos).map(|t| t.tok.clone());
            if tok.is_some() {
                self.pos += 1;
            }
            tok
        }

        fn expect(&mut self, c: char) -> Result<(), SpaceError> {
            if self.peek() == Some(&Tok::Punct(c)) {
                self.pos += 1;
                Ok(())
            } else {
                Err(self.fail(&format!("expected '{c}'")))
            }
        }

        fn value(&mut self) -> Result<Py, SpaceError> {
            let here = self.pos;
            match self.next() {
                Some(Tok::Int(n)) => Ok(Py::Int(n)),
                Some(Tok::Str(s)) => Ok(Py::Str(s)),
                Some(Tok::Punct('[')) => Ok(Py::Seq(self.items(']')?)),
                Some(Tok::Punct('(')) => Ok(Py::Seq(self.items(')')?)),
                Some(Tok::Ident(name)) if name == "range" => {
                    self.expect('(')?;
                    let args = self.items(')')?;
                    match args.as_slice() {
                        [Py::Int(b)] => Ok(Py::Range(0, *b)),
                        [Py::Int(a), Py::Int(b)] => Ok(Py::Range(*a, *b)),
                        _ => {
                            self.pos = here;
                            Err(self.fail("range(...) takes one or two integers"))
                        }
                    }
                }
                _ => {
                    self.pos = here;
                    Err(self.fail("expected a list, tuple, string, number or range(a, b)"))
                }
            }
        }

        /// Comma-separated values up to `close` (a trailing comma is fine).
        fn items(&mut self, close: char) -> Result<Vec<Py>, SpaceError> {
            let mut items = Vec::new();
            loop {
                if self.peek() == Some(&Tok::Punct(close)) {
                    self.pos += 1;
                    return Ok(items);
                }
                items.push(self.value()?);
                match self.peek() {
                    Some(Tok::Punct(',')) => self.pos += 1,
                    Some(Tok::Punct(c)) if *c == close => {}
                    _ => return Err(self.fail(&format!("expected ',' or '{close}'"))),
                }
            }
        }
    }

    const FIELDS: [&str; 4] = ["normal", "normal_concat", "reduce", "reduce_concat"];

    pub(super) fn parse(text: &str) -> Result<Genotype, SpaceError> {
        let mut p = Parser { toks: lex(text)?, pos: 0 };
        // An optional `name =` in front, as in a line copied from genotypes.py or a log.
        if matches!(p.peek(), Some(Tok::Ident(_))) && p.peek_at(1) == Some(&Tok::Punct('=')) {
            p.pos = 2;
        }
        match p.peek() {
            Some(Tok::Ident(name)) if name.rsplit('.').next() == Some("Genotype") => p.pos += 1,
            _ => {
                return Err(
                    p.fail("expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
                )
            }
        }
        p.expect('(')?;
        let mut slots: [Option<Py>; 4] = Default::default();
        let mut positional = 0;
        loop {
            if p.peek() == Some(&Tok::Punct(')')) {
                p.pos += 1;
                break;
            }
            let slot = match (p.peek(), p.peek_at(1)) {
                (Some(Tok::Ident(name)), Some(Tok::Punct('='))) => {
                    let Some(slot) = FIELDS.iter().position(|f| f == name) else {
                        return Err(
                            p.fail(&format!("unknown field '{name}' (expected {})", FIELDS.join(", ")))
                        );
                    };
                    p.pos += 2;
                    slot
                }
                _ => {
                    if positional >= FIELDS.len() {
                        return Err(p.fail("Genotype(...) takes four fields"));
                    }
                    positional += 1;
                    positional - 1
                }
            };
            if slots[slot].is_some() {
                return Err(p.fail(&format!("{} is given twice", FIELDS[slot])));
            }
            slots[slot] = Some(p.value()?);
            match p.peek() {
                Some(Tok::Punct(',')) => p.pos += 1,
                Some(Tok::Punct(')')) => {}
                _ => return Err(p.fail("expected ',' or ')'")),
            }
        }
        if p.pos < p.toks.len() {
            return Err(p.fail("unexpected text after Genotype(...)"));
        }
        let mut take =
            |slot: usize| slots[slot].take().ok_or_else(|| err(format!("missing {}", FIELDS[slot])));
        let (normal, normal_concat) = (take(0)?, take(1)?);
        let (reduce, reduce_concat) = (take(2)?, take(3)?);
        Ok(Genotype {
            normal: cell("normal", &normal, &normal_concat)?,
            reduce: cell("reduce", &reduce, &reduce_concat)?,
        })
    }

    fn cell(which: &str, ops: &Py, concat: &Py) -> Result<Cell, SpaceError> {
        let Py::Seq(items) = ops else {
            return Err(err(format!(
                "{which} must be a list of ('op', from) pairs, found {}",
                ops.describe()
            )));
        };
        let is_group = |item: &Py| matches!(item, Py::Seq(v) if matches!(v.first(), Some(Py::Seq(_))));
        let mut edges = Vec::with_capacity(items.len());
        if items.iter().any(is_group) {
            // Per-node groups: [(('op', 0), ('op', 1)), ...]; group k feeds node k+2.
            for (k, group) in items.iter().enumerate() {
                let Py::Seq(pairs) = group else {
                    return Err(err(format!(
                        "{which}, node group {k}: expected a list of ('op', from) pairs, found {}",
                        group.describe()
                    )));
                };
                for pair in pairs {
                    edges.push(edge(which, edges.len(), pair, 2 + k)?);
                }
            }
        } else {
            for (i, item) in items.iter().enumerate() {
                edges.push(edge(which, i, item, 2 + i / 2)?);
            }
        }
        let concat = match concat {
            Py::Range(a, b) => {
                (*a..*b).map(|n| node(n, &format!("{which}_concat"))).collect::<Result<_, _>>()?
            }
            Py::Seq(nodes) => nodes
                .iter()
                .map(|n| match n {
                    Py::Int(n) => node(*n, &format!("{which}_concat")),
                    other => {
                        Err(err(format!("{which}_concat must hold node numbers, found {}", other.describe())))
                    }
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(err(format!(
                    "{which}_concat must be a list or range(a, b), found {}",
                    other.describe()
                )))
            }
        };
        Ok(Cell { edges, concat })
    }

    fn node(n: i64, ctx: &str) -> Result<usize, SpaceError> {
        usize::try_from(n).map_err(|_| err(format!("{ctx}: node {n} is negative")))
    }

    fn edge(which: &str, i: usize, item: &Py, implied: usize) -> Result<Edge, SpaceError> {
        let ctx = format!("{which}, edge {i}");
        let (op, from, to) = match item {
            Py::Seq(v) => match v.as_slice() {
                [Py::Str(op), Py::Int(from)] => (op, *from, None),
                [Py::Str(op), Py::Int(from), Py::Int(to)] => (op, *from, Some(*to)),
                _ => return Err(err(format!("{ctx}: expected ('op', from), found {}", item.describe()))),
            },
            other => return Err(err(format!("{ctx}: expected ('op', from), found {}", other.describe()))),
        };
        let op: Primitive = op.parse().map_err(|e| err(format!("{ctx}: {e}")))?;
        let from = usize::try_from(from).map_err(|_| err(format!("{ctx}: from ({from}) is negative")))?;
        let to = match to {
            None => implied,
            Some(to) => usize::try_from(to).map_err(|_| err(format!("{ctx}: to ({to}) is negative")))?,
        };
        Ok(Edge::new(op, from, to))
    }

    /// A cell's edge list in DARTS text (see [`Genotype::to_darts_string`]).
    pub(super) fn edges(cell: &Cell) -> String {
        let pairs = |edges: &[Edge]| {
            let items: Vec<String> =
                edges.iter().map(|e| format!("('{}', {})", e.op.name(), e.from)).collect();
            format!("[{}]", items.join(", "))
        };
        if cell.is_darts_ordered() {
            return pairs(&cell.edges);
        }
        let by_node = Cell { edges: cell.edges_by_node(), concat: Vec::new() };
        if by_node.is_darts_ordered() {
            return pairs(&by_node.edges);
        }
        let items: Vec<String> =
            cell.edges.iter().map(|e| format!("('{}', {}, {})", e.op.name(), e.from, e.to)).collect();
        format!("[{}]", items.join(", "))
    }

    /// `range(a, b)` for a run of consecutive nodes (as DARTS prints it), a list otherwise.
    pub(super) fn concat(nodes: &[usize]) -> String {
        if nodes.len() >= 2 && nodes.windows(2).all(|w| w[1] == w[0] + 1) {
            format!("range({}, {})", nodes[0], nodes[nodes.len() - 1] + 1)
        } else {
            format!("{nodes:?}")
        }
    }
}

/// The canonical names [`published`] knows (aliases: `DARTS` = `DARTS_V2`, `NASNet-A`,
/// `AmoebaNet-A`, `PC-DARTS`, `P-DARTS`; case and `-`/`_` are ignored).
pub const PUBLISHED: &[&str] =
    &["CNAS", "DARTS_V1", "DARTS_V2", "ENAS", "NASNet", "AmoebaNet", "PC_DARTS", "PDARTS"];

/// A published genotype, stored as DARTS lists: edges 2k and 2k+1 feed node k+2.
struct PublishedEntry {
    name: &'static str,
    aliases: &'static [&'static str],
    normal: &'static [(&'static str, usize)],
    normal_concat: &'static [usize],
    reduce: &'static [(&'static str, usize)],
    reduce_concat: &'static [usize],
}

// One line per intermediate node: its two (op, from) inputs.
#[rustfmt::skip]
const REGISTRY: &[PublishedEntry] = &[
    // CNAS: Curriculum Neural Architecture Search (Guo et al., "Breaking the Curse of Space
    // Explosion: Towards Efficient NAS with Curriculum Search", ICML 2020), CIFAR-10 cell.
    PublishedEntry {
        name: "CNAS",
        aliases: &[],
        normal: &[
            ("dil_conv_3x3", 1), ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("max_pool_3x3", 3),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 4),
        ],
        normal_concat: &[2, 3, 4, 5],
        reduce: &[
            ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("dil_conv_5x5", 2), ("skip_connect", 1),
            ("dil_conv_3x3", 2), ("sep_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 3),
        ],
        reduce_concat: &[2, 3, 4, 5],
    },
    // DARTS (first order): Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019.
    PublishedEntry {
        name: "DARTS_V1",
        aliases: &[],
        normal: &[
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 0),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("skip_connect", 2),
        ],
        normal_concat: &[2, 3, 4, 5],
        reduce: &[
            ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("avg_pool_3x3", 0),
        ],
        reduce_concat: &[2, 3, 4, 5],
    },
    // DARTS (second order): Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019.
    PublishedEntry {
        name: "DARTS_V2",
        aliases: &["DARTS"],
        normal: &[
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0),
            ("skip_connect", 0), ("dil_conv_3x3", 2),
        ],
        normal_concat: &[2, 3, 4, 5],
        reduce: &[
            ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2),
            ("skip_connect", 2), ("max_pool_3x3", 1),
        ],
        reduce_concat: &[2, 3, 4, 5],
    },
    // ENAS: Pham et al., "Efficient Neural Architecture Search via Parameter Sharing", ICML 2018.
    PublishedEntry {
        name: "ENAS",
        aliases: &[],
        normal: &[
            ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("sep_conv_5x5", 1),
            ("avg_pool_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 1),
            ("avg_pool_3x3", 0), ("sep_conv_5x5", 1),
        ],
        normal_concat: &[2, 3, 4, 5, 6],
        reduce: &[
            ("sep_conv_5x5", 0), ("avg_pool_3x3", 1),
            ("sep_conv_3x3", 1), ("avg_pool_3x3", 1),
            ("avg_pool_3x3", 1), ("sep_conv_3x3", 1),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 4),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 5),
        ],
        reduce_concat: &[2, 3, 6],
    },
    // NASNet-A: Zoph et al., "Learning Transferable Architectures for Scalable Image
    // Recognition", CVPR 2018.
    PublishedEntry {
        name: "NASNet",
        aliases: &["NASNet-A"],
        normal: &[
            ("sep_conv_5x5", 1), ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0),
            ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1),
        ],
        normal_concat: &[2, 3, 4, 5, 6],
        reduce: &[
            ("sep_conv_5x5", 1), ("sep_conv_7x7", 0),
            ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0),
            ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1),
        ],
        reduce_concat: &[4, 5, 6],
    },
    // AmoebaNet-A: Real et al., "Regularized Evolution for Image Classifier Architecture
    // Search", AAAI 2019.
    PublishedEntry {
        name: "AmoebaNet",
        aliases: &["AmoebaNet-A"],
        normal: &[
            ("avg_pool_3x3", 0), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3),
            ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1),
        ],
        normal_concat: &[4, 5, 6],
        reduce: &[
            ("avg_pool_3x3", 0), ("sep_conv_3x3", 1),
            ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1),
            ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5),
        ],
        reduce_concat: &[3, 4, 6],
    },
    // PC-DARTS (CIFAR-10 cell): Xu et al., "PC-DARTS: Partial Channel Connections for
    // Memory-Efficient Architecture Search", ICLR 2020.
    PublishedEntry {
        name: "PC_DARTS",
        aliases: &["PC_DARTS_cifar"],
        normal: &[
            ("sep_conv_3x3", 1), ("skip_connect", 0),
            ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1),
            ("avg_pool_3x3", 0), ("dil_conv_3x3", 1),
        ],
        normal_concat: &[2, 3, 4, 5],
        reduce: &[
            ("sep_conv_5x5", 1), ("max_pool_3x3", 0),
            ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
        ],
        reduce_concat: &[2, 3, 4, 5],
    },
    // P-DARTS: Chen et al., "Progressive Differentiable Architecture Search: Bridging the Depth
    // Gap between Search and Evaluation", ICCV 2019.
    PublishedEntry {
        name: "PDARTS",
        aliases: &[],
        normal: &[
            ("skip_connect", 0), ("dil_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 4),
        ],
        normal_concat: &[2, 3, 4, 5],
        reduce: &[
            ("avg_pool_3x3", 0), ("sep_conv_5x5", 1),
            ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1),
            ("dil_conv_3x3", 1), ("dil_conv_5x5", 3),
        ],
        reduce_concat: &[2, 3, 4, 5],
    },
];

/// Lower case, without `-`, `_` or spaces: `DARTS-V2`, `darts_v2` and `Darts V2` all match.
fn lookup_key(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_') && !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A published genotype by name (one of [`PUBLISHED`] or an alias), ignoring case and
/// `-`/`_` differences: `published("darts_v2") == published("DARTS-V2")`.
pub fn published(name: &str) -> Option<Genotype> {
    let key = lookup_key(name);
    let entry = REGISTRY
        .iter()
        .find(|entry| lookup_key(entry.name) == key || entry.aliases.iter().any(|a| lookup_key(a) == key))?;
    let cell = |ops: &[(&str, usize)], concat: &[usize]| {
        let ops: Vec<(Primitive, usize)> = ops
            .iter()
            .map(|&(name, from)| {
                let op = Primitive::from_name(name).expect("published genotypes use known names");
                (op, from)
            })
            .collect();
        Cell::from_darts(&ops, concat)
    };
    Some(Genotype {
        normal: cell(entry.normal, entry.normal_concat),
        reduce: cell(entry.reduce, entry.reduce_concat),
    })
}

/// The published name `name` stands for (`"darts"` → `"DARTS_V2"`), if any.
pub fn published_name(name: &str) -> Option<&'static str> {
    let key = lookup_key(name);
    REGISTRY
        .iter()
        .find(|entry| lookup_key(entry.name) == key || entry.aliases.iter().any(|a| lookup_key(a) == key))
        .map(|entry| entry.name)
}

/// What `--arch` names: a published genotype, or a file holding one (JSON or DARTS text).
/// Returns a display name (the canonical published name or the file path) with the genotype.
pub fn resolve_arch(arg: &str) -> crate::Result<(String, Genotype)> {
    if let (Some(name), Some(genotype)) = (published_name(arg), published(arg)) {
        return Ok((name.to_string(), genotype));
    }
    let path = std::path::Path::new(arg);
    if !path.is_file() {
        return Err(crate::Error::BadOption(format!(
            "unknown architecture '{arg}': neither a published name ({}) nor a genotype file",
            PUBLISHED.join(", ")
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    let genotype = Genotype::parse_any(&text).map_err(|e| crate::Error::bad_file(path, e.to_string()))?;
    Ok((arg.to_string(), genotype))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_published() -> Vec<(&'static str, Genotype)> {
        PUBLISHED
            .iter()
            .map(|&name| (name, published(name).unwrap_or_else(|| panic!("{name} missing"))))
            .collect()
    }

    fn cnas() -> Genotype {
        published("CNAS").unwrap()
    }

    /// A valid two-node cell to break in the validation tests.
    fn small() -> Cell {
        Cell {
            edges: vec![
                Edge::new(Primitive::SepConv3x3, 0, 2),
                Edge::new(Primitive::SkipConnect, 1, 2),
                Edge::new(Primitive::SepConv3x3, 0, 3),
                Edge::new(Primitive::MaxPool3x3, 2, 3),
            ],
            concat: vec![2, 3],
        }
    }

    fn invalid(cell: &Cell) -> String {
        match cell.validate("normal", None) {
            Err(SpaceError::Invalid(msg)) => msg,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn primitive_names_parse_and_serialize() {
        for p in Primitive::ALL {
            assert_eq!(p.name().parse::<Primitive>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), Value::String(p.name().into()));
            let back: Primitive = serde_json::from_str(&format!("\"{}\"", p.name())).unwrap();
            assert_eq!(back, p);
        }
        assert_eq!(" Sep_Conv_3x3 ".parse::<Primitive>().unwrap(), Primitive::SepConv3x3);
        let e = "sep_conv_9x9".parse::<Primitive>().unwrap_err().to_string();
        assert!(e.contains("unknown operation 'sep_conv_9x9'"), "{e}");
        assert!(e.contains("sep_conv_3x3") && e.contains("conv_1x3_3x1"), "{e}");
        assert!(!e.contains('\n'));
        let e = serde_json::from_str::<Primitive>("\"conv_9\"").unwrap_err().to_string();
        assert!(e.contains("unknown operation 'conv_9'"), "{e}");
        for (i, p) in Primitive::DARTS.iter().enumerate() {
            assert_eq!(p.darts_index(), Some(i));
            assert_eq!(Primitive::from_darts_index(i), Some(*p));
        }
        assert_eq!(Primitive::SepConv7x7.darts_index(), None);
        assert_eq!(Primitive::from_darts_index(8), None);
    }

    #[test]
    fn published_genotypes_validate_with_expected_nodes() {
        let expected = [
            ("CNAS", 4),
            ("DARTS_V1", 4),
            ("DARTS_V2", 4),
            ("ENAS", 5),
            ("NASNet", 5),
            ("AmoebaNet", 5),
            ("PC_DARTS", 4),
            ("PDARTS", 4),
        ];
        assert_eq!(PUBLISHED.len(), expected.len());
        assert_eq!(REGISTRY.len(), PUBLISHED.len());
        for (entry, name) in REGISTRY.iter().zip(PUBLISHED) {
            assert_eq!(entry.name, *name);
        }
        for (name, nodes) in expected {
            let g = published(name).unwrap();
            g.validate(None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(g.normal.num_nodes(), nodes, "{name} normal");
            assert_eq!(g.reduce.num_nodes(), nodes, "{name} reduce");
            assert!(g.normal.is_darts_ordered() && g.reduce.is_darts_ordered(), "{name}");
        }
        for name in ["CNAS", "DARTS_V1", "DARTS_V2", "PC_DARTS", "PDARTS", "ENAS"] {
            published(name)
                .unwrap()
                .validate(Some(&Primitive::DARTS))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let nasnet = published("NASNet").unwrap();
        assert_eq!(nasnet.normal.concat, vec![2, 3, 4, 5, 6]);
        assert_eq!(nasnet.reduce.concat, vec![4, 5, 6]);
        assert!(nasnet.uses(Primitive::SepConv7x7));
        let amoeba = published("AmoebaNet").unwrap();
        assert_eq!(amoeba.normal.concat, vec![4, 5, 6]);
        assert_eq!(amoeba.reduce.concat, vec![3, 4, 6]);
        assert!(amoeba.reduce.uses(Primitive::Conv7x1_1x7));
        assert!(!amoeba.normal.uses(Primitive::Conv7x1_1x7));
        assert_eq!(published("ENAS").unwrap().reduce.concat, vec![2, 3, 6]);
    }

    #[test]
    fn cnas_matches_the_paper() {
        use Primitive as P;
        let g = cnas();
        let e = |op, from, to| Edge::new(op, from, to);
        assert_eq!(
            g.normal.edges,
            vec![
                e(P::DilConv3x3, 1, 2),
                e(P::SepConv3x3, 0, 2),
                e(P::SepConv3x3, 0, 3),
                e(P::SkipConnect, 1, 3),
                e(P::SepConv3x3, 1, 4),
                e(P::MaxPool3x3, 3, 4),
                e(P::SepConv3x3, 2, 5),
                e(P::SepConv3x3, 4, 5),
            ]
        );
        assert_eq!(
            g.reduce.edges,
            vec![
                e(P::SepConv3x3, 0, 2),
                e(P::SkipConnect, 1, 2),
                e(P::DilConv5x5, 2, 3),
                e(P::SkipConnect, 1, 3),
                e(P::DilConv3x3, 2, 4),
                e(P::SepConv3x3, 1, 4),
                e(P::SepConv5x5, 0, 5),
                e(P::SepConv3x3, 3, 5),
            ]
        );
        assert_eq!(g.normal.concat, vec![2, 3, 4, 5]);
        assert_eq!(g.reduce.concat, vec![2, 3, 4, 5]);
    }

    #[test]
    fn darts_v2_matches_the_reference_text() {
        // As printed in the DARTS repository's cnn/genotypes.py.
        let text = "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";
        assert_eq!(Genotype::from_darts_str(text).unwrap(), published("DARTS_V2").unwrap());
    }

    #[test]
    fn aliases_and_lookup() {
        let v2 = published("DARTS_V2").unwrap();
        assert_eq!(published("darts_v2"), Some(v2.clone()));
        assert_eq!(published("DARTS-V2"), Some(v2.clone()));
        assert_eq!(published("DARTS"), Some(v2.clone()));
        assert_eq!(published(" dartsv2 "), Some(v2));
        assert_ne!(published("DARTS_V1"), published("DARTS_V2"));
        assert_eq!(published("NASNet-A"), published("NASNet"));
        assert_eq!(published("nasnet_a"), published("NASNet"));
        assert_eq!(published("AmoebaNet-A"), published("AmoebaNet"));
        assert_eq!(published("PC-DARTS"), published("PC_DARTS"));
        assert_eq!(published("pc_darts_cifar"), published("PC_DARTS"));
        assert_eq!(published("P-DARTS"), published("PDARTS"));
        assert_eq!(published("cnas"), Some(cnas()));
        assert_eq!(published("enas"), published("ENAS"));
        assert_eq!(published("GDAS"), None);
        assert_eq!(published(""), None);
    }

    #[test]
    fn json_named_round_trip() {
        for (name, g) in all_published() {
            let v = g.to_json();
            assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
            assert_eq!(Genotype::from_json_value(&v).unwrap(), g, "{name}");
            let pretty = g.to_json_pretty();
            assert_eq!(serde_json::from_str::<Value>(&pretty).unwrap(), v, "{name}");
            assert_eq!(Genotype::from_json_str(&pretty).unwrap(), g, "{name}");
            assert_eq!(Genotype::parse_any(&pretty).unwrap(), g, "{name}");
        }
        let v = cnas().to_json();
        assert_eq!(v["normal"]["edges"][0], json!(["dil_conv_3x3", 1, 2]));
        assert_eq!(v["reduce"]["concat"], json!([2, 3, 4, 5]));
    }

    #[test]
    fn json_serde_embeds_in_other_structs() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Checkpoint {
            epoch: u32,
            genotype: Genotype,
        }
        let c = Checkpoint { epoch: 3, genotype: cnas() };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains(r#""edges":[["dil_conv_3x3",1,2],"#), "{text}");
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
        let bad = text.replace(r#"["dil_conv_3x3",1,2]"#, r#"["dil_conv_3x3",2,2]"#);
        let e = serde_json::from_str::<Checkpoint>(&bad).unwrap_err().to_string();
        assert!(e.contains("from must be smaller than to"), "{e}");
    }

    #[test]
    fn json_ordinal_round_trip() {
        for (name, g) in all_published() {
            let darts_only = !Primitive::ALL[8..].iter().any(|&p| g.uses(p));
            match g.to_json_ordinal() {
                Ok(v) => {
                    assert!(darts_only, "{name}");
                    assert!(v["normal"]["edges"][0][0].is_u64(), "{name}");
                    assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
                }
                Err(e) => {
                    assert!(!darts_only, "{name}");
                    assert!(e.to_string().contains("not in the DARTS operation set"), "{e}");
                }
            }
        }
        let v = cnas().to_json_ordinal().unwrap();
        assert_eq!(v["normal"]["edges"][0], json!([6, 1, 2]));
        let e = published("NASNet").unwrap().to_json_ordinal().unwrap_err().to_string();
        assert!(e.starts_with("reduce cell, edge 1 (sep_conv_7x7, 0 -> 2):"), "{e}");

        // With a "primitives" list, indices point into it: every genotype round-trips.
        for (name, g) in all_published() {
            let table: Vec<&str> = Primitive::ALL.iter().rev().map(|p| p.name()).collect();
            let cell = |c: &Cell| {
                let edges: Vec<Value> = c
                    .edges
                    .iter()
                    .map(|e| {
                        let k = table.iter().position(|n| *n == e.op.name()).unwrap();
                        json!([k, e.from, e.to])
                    })
                    .collect();
                json!({"edges": edges, "concat": c.concat})
            };
            let v = json!({"name": name, "source": "test", "primitives": table,
                           "normal": cell(&g.normal), "reduce": cell(&g.reduce)});
            assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name}");
        }
    }

    #[test]
    fn json_darts_layout_and_edge_objects_round_trip() {
        for (name, g) in all_published() {
            let pairs =
                |c: &Cell| -> Vec<Value> { c.edges.iter().map(|e| json!([e.op.name(), e.from])).collect() };
            let v = json!({
                "name": name,
                "normal": pairs(&g.normal), "normal_concat": g.normal.concat,
                "reduce": pairs(&g.reduce), "reduce_concat": g.reduce.concat,
            });
            assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name} DARTS");

            let objects = |c: &Cell| -> Value {
                let edges: Vec<Value> =
                    c.edges.iter().map(|e| json!({"op": e.op.name(), "from": e.from, "to": e.to})).collect();
                json!({"edges": edges, "concat": c.concat})
            };
            let v = json!({"normal": objects(&g.normal), "reduce": objects(&g.reduce)});
            assert_eq!(Genotype::from_json_str(&v.to_string()).unwrap(), g, "{name} objects");
        }
        // DARTS layout with ordinal ops.
        let text = r#"{"normal": [[6, 1], [0, 0], [0, 0], [5, 1], [0, 1], [2, 3], [0, 2], [0, 4]],
                       "normal_concat": [2, 3, 4, 5],
                       "reduce": [[0, 0], [5, 1], [7, 2], [5, 1], [6, 2], [0, 1], [1, 0], [0, 3]],
                       "reduce_concat": [2, 3, 4, 5]}"#;
        assert_eq!(Genotype::from_json_str(text).unwrap(), cnas());
    }

    #[test]
    fn json_edge_order_is_kept() {
        let mut g = cnas();
        g.normal.edges.swap(0, 7);
        g.normal.edges.swap(2, 5);
        assert_eq!(Genotype::from_json_str(&g.to_json().to_string()).unwrap(), g);
        assert_eq!(Genotype::from_json_str(&g.to_json_ordinal().unwrap().to_string()).unwrap(), g);
    }

    #[test]
    fn json_malformed() {
        let e = Genotype::from_json_str("{\"normal\": {\"edges\": [}").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("invalid genotype JSON: "), "{msg}");
        assert!(msg.contains("line 1 column"), "{msg}");
        assert!(!msg.contains('\n'));

        let e = Genotype::from_json_str("{\n  \"normal\": 3,\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn json_structural_errors() {
        let mut v = cnas().to_json();
        v["extra"] = json!(1);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("unknown top-level key \"extra\""), "{e}");

        let e =
            Genotype::from_json_str(r#"{"normal": {"edges": [], "concat": []}}"#).unwrap_err().to_string();
        assert!(e.contains("missing \"reduce\" cell"), "{e}");

        let mut v = cnas().to_json();
        v["normal"]["edges"][3] = json!(["skip_connect", 1]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("normal cell, edge 3: expected [op, from, to]"), "{e}");

        let mut v = cnas().to_json();
        v["reduce"]["edges"][2] = json!(["dil_conv_9x9", 2, 3]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("reduce cell, edge 2: unknown operation 'dil_conv_9x9'"), "{e}");

        let mut v = cnas().to_json();
        v["reduce"]["edges"][2] = json!([8, 2, 3]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("operation index 8 is out of range (0..8 in the DARTS order"), "{e}");

        let mut v = cnas().to_json();
        v["normal"]["edges"][1] = json!(["sep_conv_3x3", -1, 2]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("\"from\" must be a non-negative integer"), "{e}");

        let mut v = cnas().to_json();
        v["normal"]["edges"][1] = json!({"op": "sep_conv_3x3", "from": 0});
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("normal cell, edge 1: missing \"to\""), "{e}");

        let mut v = cnas().to_json();
        v["normal_concat"] = json!([2, 3, 4, 5]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("\"normal_concat\" belongs to the DARTS layout"), "{e}");

        let v = json!({"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]],
                       "reduce": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]],
                       "reduce_concat": [2]});
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("missing \"normal_concat\""), "{e}");

        // Structure is validated after reading.
        let mut v = cnas().to_json();
        v["normal"]["concat"] = json!([2, 3, 4, 6]);
        let e = Genotype::from_json_value(&v).unwrap_err().to_string();
        assert!(e.contains("normal cell: concat names node 6, which does not exist"), "{e}");
    }

    #[test]
    fn darts_text_round_trip() {
        for (name, g) in all_published() {
            let text = g.to_darts_string();
            assert!(text.starts_with("Genotype(normal=[('"), "{text}");
            assert_eq!(Genotype::from_darts_str(&text).unwrap(), g, "{name}: {text}");
            assert_eq!(Genotype::parse_any(&text).unwrap(), g, "{name}");
        }
        let text = published("DARTS_V1").unwrap().to_darts_string();
        assert_eq!(
            text,
            "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), \
             ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), \
             ('skip_connect', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), \
             ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), \
             ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], \
             reduce_concat=range(2, 6))"
        );
        assert!(published("AmoebaNet").unwrap().to_darts_string().ends_with("reduce_concat=[3, 4, 6])"));
    }

    #[test]
    fn darts_text_is_tolerant() {
        let text = r#"
            genotype = genotypes.Genotype(
              normal = [
                ("dil_conv_3x3", 1), ("sep_conv_3x3", 0),   # node 2
                ('sep_conv_3x3', 0), ('skip_connect', 1),
                ('sep_conv_3x3', 1), ('max_pool_3x3', 3),
                ('sep_conv_3x3', 2), ('sep_conv_3x3', 4),
              ],
              normal_concat = range(2, 6),
              reduce = (
                (('sep_conv_3x3', 0), ('skip_connect', 1)),
                (('dil_conv_5x5', 2), ('skip_connect', 1)),
                (('dil_conv_3x3', 2), ('sep_conv_3x3', 1)),
                (('sep_conv_5x5', 0), ('sep_conv_3x3', 3)),
              ),
              reduce_concat = [2, 3, 4, 5],
            )
        "#;
        assert_eq!(Genotype::from_darts_str(text).unwrap(), cnas());
        assert_eq!(Genotype::parse_any(text).unwrap(), cnas());

        // Positional fields, as namedtuple allows.
        let g = published("PDARTS").unwrap();
        let text = g
            .to_darts_string()
            .replace("normal=", "")
            .replace("normal_concat=", "")
            .replace("reduce=", "")
            .replace("reduce_concat=", "");
        assert_eq!(Genotype::from_darts_str(&text).unwrap(), g);
    }

    #[test]
    fn darts_text_writes_unordered_cells_sensibly() {
        // Out of node order but well formed: written node by node (the same network).
        let mut g = cnas();
        g.normal.edges.swap(0, 7);
        let back = Genotype::from_darts_str(&g.to_darts_string()).unwrap();
        assert_eq!(back.normal.edges, g.normal.edges_by_node());
        assert_eq!(back.reduce, g.reduce);
        // Not expressible as DARTS pairs at all: written as (op, from, to) triples.
        let mut odd = cnas();
        odd.normal.edges[6].to = 3;
        let text = odd.to_darts_string();
        assert!(text.contains("normal=[('dil_conv_3x3', 1, 2), "), "{text}");
        assert!(text.contains("('sep_conv_3x3', 2, 3)"), "{text}");
        let e = Genotype::from_darts_str(&text).unwrap_err().to_string();
        assert!(e.contains("normal cell: node 3 has 3 incoming edges"), "{e}");
    }

    #[test]
    fn darts_text_errors() {
        let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3', 0)").unwrap_err();
        assert!(e.to_string().starts_with("invalid DARTS genotype text: "), "{e}");
        let e = Genotype::from_darts_str("Genotype(normal=[], normal_concat=[], reduce=[])")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing reduce_concat"), "{e}");
        let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3', 0)],\n  nomal_concat=[2])")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, column 3: unknown field 'nomal_concat'"), "{e}");
        let text = cnas().to_darts_string().replace("'max_pool_3x3'", "'max_pool_9x9'");
        let e = Genotype::from_darts_str(&text).unwrap_err().to_string();
        assert!(e.contains("normal, edge 5: unknown operation 'max_pool_9x9'"), "{e}");
        let e = Genotype::from_darts_str("Genotype(normal=[('sep_conv_3x3, 0)])").unwrap_err().to_string();
        assert!(e.contains("unterminated string"), "{e}");
        let e = Genotype::parse_any("   ").unwrap_err().to_string();
        assert!(e.contains("empty genotype description"), "{e}");
    }

    #[test]
    fn display_is_readable() {
        let text = cnas().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "normal: (dil_conv_3x3, 1, 2) (sep_conv_3x3, 0, 2) (sep_conv_3x3, 0, 3) \
             (skip_connect, 1, 3) (sep_conv_3x3, 1, 4) (max_pool_3x3, 3, 4) (sep_conv_3x3, 2, 5) \
             (sep_conv_3x3, 4, 5) concat [2, 3, 4, 5]"
        );
        assert!(lines[1].starts_with("reduce: (sep_conv_3x3, 0, 2) (skip_connect, 1, 2)"));
        assert!(lines[1].ends_with("concat [2, 3, 4, 5]"));
    }

    #[test]
    fn validate_empty_cell() {
        let c = Cell { edges: vec![], concat: vec![2] };
        assert_eq!(invalid(&c), "normal cell has no edges");
    }

    #[test]
    fn validate_odd_edge_count() {
        let mut c = small();
        c.edges.pop();
        assert!(invalid(&c).contains("normal cell has 3 edges, an odd number"));
    }

    #[test]
    fn validate_edge_into_input_node() {
        let mut c = small();
        c.edges[1] = Edge::new(Primitive::SkipConnect, 0, 1);
        let msg = invalid(&c);
        assert!(
            msg.starts_with("normal cell, edge 1 (skip_connect, 0 -> 1): to names input node 1"),
            "{msg}"
        );
    }

    #[test]
    fn validate_from_not_smaller_than_to() {
        let mut c = small();
        c.edges[3] = Edge::new(Primitive::SepConv3x3, 4, 3);
        assert_eq!(invalid(&c), "normal cell, edge 3 (sep_conv_3x3, 4 -> 3): from must be smaller than to");
        c.edges[3] = Edge::new(Primitive::SepConv3x3, 3, 3);
        assert!(invalid(&c).contains("from must be smaller than to"));
    }

    #[test]
    fn validate_to_beyond_last_node() {
        let mut c = small();
        c.edges[3] = Edge::new(Primitive::SepConv3x3, 2, 4);
        let msg = invalid(&c);
        assert!(msg.contains("edge 3 (sep_conv_3x3, 2 -> 4): to is beyond the cell's last node 3"), "{msg}");
    }

    #[test]
    fn validate_node_without_two_inputs() {
        let mut c = small();
        c.edges[1] = Edge::new(Primitive::SkipConnect, 1, 3);
        let msg = invalid(&c);
        assert_eq!(msg, "normal cell: node 2 has 1 incoming edge, expected exactly 2");
    }

    #[test]
    fn validate_concat_empty() {
        let mut c = small();
        c.concat.clear();
        assert_eq!(invalid(&c), "normal cell: concat is empty");
    }

    #[test]
    fn validate_concat_duplicate() {
        let mut c = small();
        c.concat = vec![2, 3, 2];
        assert_eq!(invalid(&c), "normal cell: concat lists node 2 more than once");
    }

    #[test]
    fn validate_concat_missing_node() {
        let mut c = small();
        c.concat = vec![2, 7];
        assert!(invalid(&c).contains("concat names node 7, which does not exist"));
    }

    #[test]
    fn validate_concat_input_node() {
        let mut c = small();
        c.concat = vec![0, 2, 3];
        assert!(invalid(&c).contains("concat names input node 0"));
    }

    #[test]
    fn validate_allowed_set() {
        let nasnet = published("NASNet").unwrap();
        nasnet.validate(None).unwrap();
        let e = nasnet.validate(Some(&Primitive::DARTS)).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "reduce cell, edge 1 (sep_conv_7x7, 0 -> 2): operation sep_conv_7x7 is not allowed"
            ),
            "{e}"
        );
        assert!(e.contains("allowed: sep_conv_3x3, sep_conv_5x5"), "{e}");
        let only = [Primitive::SepConv3x3, Primitive::SkipConnect];
        let e = cnas().validate(Some(&only)).unwrap_err().to_string();
        assert_eq!(
            e,
            "normal cell, edge 0 (dil_conv_3x3, 1 -> 2): operation dil_conv_3x3 is not allowed (allowed: sep_conv_3x3, skip_connect)"
        );
    }

    #[test]
    fn validate_names_the_cell() {
        let mut g = cnas();
        g.reduce.concat.push(9);
        let e = g.validate(None).unwrap_err().to_string();
        assert!(e.starts_with("reduce cell: concat names node 9"), "{e}");
    }

    #[test]
    fn messages_are_single_lines() {
        let mut cells = vec![small(); 6];
        cells[0].edges.clear();
        cells[1].edges.pop();
        cells[2].edges[0].to = 0;
        cells[3].edges[0].from = 5;
        cells[4].concat = vec![];
        cells[5].edges[0].to = 3;
        for c in &cells {
            assert!(!invalid(c).contains('\n'));
        }
    }
}
