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

pub use crate::error::SpaceError;

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

/// Reading and writing the DARTS Python namedtuple text.
mod darts_text;
/// Interpreting a parsed JSON value as a genotype (structure only; validation follows).
mod json_read;
/// The table of published cells and `--arch` resolution.
mod published;

pub use published::{published, published_name, resolve_arch, PUBLISHED};

#[cfg(test)]
mod tests;
