//! Reading and writing the DARTS Python namedtuple text.
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
        } else if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
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

/// Deeper than any genotype (per-node groups of pairs nest 4 deep), and shallow enough that
/// parsing `[[[[…` never overflows the stack.
const MAX_NESTING: usize = 32;

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Lists and tuples open around the current token.
    depth: usize,
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
        if self.depth >= MAX_NESTING {
            return Err(self.fail(&format!("lists nested more than {MAX_NESTING} deep")));
        }
        self.depth += 1;
        let items = self.items_inside(close);
        self.depth -= 1;
        items
    }

    fn items_inside(&mut self, close: char) -> Result<Vec<Py>, SpaceError> {
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
    let mut p = Parser { toks: lex(text)?, pos: 0, depth: 0 };
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
                    return Err(p.fail(&format!("unknown field '{name}' (expected {})", FIELDS.join(", "))));
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
    let mut take = |slot: usize| slots[slot].take().ok_or_else(|| err(format!("missing {}", FIELDS[slot])));
    let (normal, normal_concat) = (take(0)?, take(1)?);
    let (reduce, reduce_concat) = (take(2)?, take(3)?);
    Ok(Genotype {
        normal: json_read::within_limits("normal", cell("normal", &normal, &normal_concat)?)?,
        reduce: json_read::within_limits("reduce", cell("reduce", &reduce, &reduce_concat)?)?,
    })
}

fn cell(which: &str, ops: &Py, concat: &Py) -> Result<Cell, SpaceError> {
    let Py::Seq(items) = ops else {
        return Err(err(format!("{which} must be a list of ('op', from) pairs, found {}", ops.describe())));
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
        // Bounded before it is expanded: a cell has at most one node per two edges.
        Py::Range(a, b) if b.saturating_sub(*a) > (edges.len() as i64).saturating_add(2) => {
            return Err(err(format!(
                "{which}_concat: range({a}, {b}) names more nodes than the cell has ({} edges)",
                edges.len()
            )))
        }
        Py::Range(a, b) => (*a..*b).map(|n| node(n, &format!("{which}_concat"))).collect::<Result<_, _>>()?,
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
        let items: Vec<String> = edges.iter().map(|e| format!("('{}', {})", e.op.name(), e.from)).collect();
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
