//! Interpreting a parsed JSON value as a genotype (structure only; validation follows).
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
    let normal = within_limits("normal", cell(obj, "normal", &ordinals)?)?;
    let reduce = within_limits("reduce", cell(obj, "reduce", &ordinals)?)?;
    Ok(Genotype { normal, reduce })
}

/// Edges (and concatenated nodes) a cell may have: far more than any searched or published one
/// (8 to 14), few enough that checking a cell, quadratic in its edges, stays instant.
const MAX_CELL_EDGES: usize = 1024;

/// `cell`, unless it is too large to be a real one (a file read whole is not otherwise bounded).
pub(super) fn within_limits(which: &str, cell: Cell) -> Result<Cell, SpaceError> {
    if cell.edges.len() > MAX_CELL_EDGES || cell.concat.len() > MAX_CELL_EDGES {
        return Err(SpaceError::Invalid(format!(
            "{which} cell has {} edges and concatenates {} nodes; at most {MAX_CELL_EDGES} of each are read",
            cell.edges.len(),
            cell.concat.len()
        )));
    }
    Ok(cell)
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
            n.as_u64().and_then(|k| usize::try_from(k).ok()).and_then(|k| table.get(k).copied()).ok_or_else(
                || {
                    err(format!(
                        "{ctx}: operation index {n} is out of range (0..{} in {which}: {})",
                        table.len(),
                        names_of(table)
                    ))
                },
            )
        }
        other => Err(err(format!("{ctx}: op must be an operation name or an index, found {}", kind(other)))),
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
