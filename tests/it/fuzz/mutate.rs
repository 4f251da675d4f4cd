//! Mutations: byte-level ones for binary formats (flips, interesting values, lengths and counts
//! made huge, truncation, chunks deleted, repeated, spliced from another seed) and token-level
//! ones for text (numbers made huge or negative, brackets and quotes dropped or repeated,
//! keywords and odd characters inserted).
use rand::seq::IndexedRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Inputs are kept below this many bytes (seeds are a few KiB).
const MAX_LEN: usize = 256 << 10;

const BYTES: [u8; 8] = [0, 1, 0x7F, 0x80, 0xFF, b'\n', b'.', b'('];
const WORDS: [u64; 12] = [
    0,
    1,
    0x7F,
    0xFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    0x7FFF_FFFF_FFFF_FFFF,
    0x8000_0000_0000_0000,
    u64::MAX,
];

fn pos(rng: &mut ChaCha8Rng, v: &[u8]) -> usize {
    rng.random_range(0..=v.len())
}

/// A chunk `start..end` of `v`, mostly short.
fn chunk(rng: &mut ChaCha8Rng, v: &[u8]) -> (usize, usize) {
    let start = rng.random_range(0..=v.len());
    let longest = (v.len() - start).min(if rng.random_bool(0.8) { 16 } else { 4096 });
    (start, start + rng.random_range(0..=longest))
}

/// One byte-level change to `v`.
pub fn mutate_bytes_once(rng: &mut ChaCha8Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.random_range(0..10) {
        0 if !v.is_empty() => {
            let i = rng.random_range(0..v.len());
            v[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !v.is_empty() => {
            let i = rng.random_range(0..v.len());
            v[i] = if rng.random_bool(0.5) { *BYTES.choose(rng).unwrap() } else { rng.random() };
        }
        // A length, count or size field made interesting, either width, near or far.
        2 if v.len() >= 8 => {
            let i = rng.random_range(0..=v.len() - 8);
            let mut w = *WORDS.choose(rng).unwrap();
            if rng.random_bool(0.3) {
                w = (v.len() as u64).wrapping_add(rng.random_range(0..16)).wrapping_sub(8);
            }
            let n = if rng.random_bool(0.5) { 4 } else { 8 };
            v[i..i + n].copy_from_slice(&w.to_le_bytes()[..n]);
        }
        3 => {
            let at = pos(rng, v);
            v.truncate(at);
        }
        4 => {
            let (a, b) = chunk(rng, v);
            v.drain(a..b);
        }
        5 => {
            let (a, b) = chunk(rng, v);
            let copy = v[a..b].to_vec();
            let at = pos(rng, v);
            v.splice(at..at, copy);
        }
        // One byte repeated: deep nesting in pickles and texts.
        6 if !v.is_empty() => {
            let byte = v[rng.random_range(0..v.len())];
            let at = pos(rng, v);
            let n = if rng.random_bool(0.5) { rng.random_range(1..64) } else { rng.random_range(64..20_000) };
            v.splice(at..at, std::iter::repeat_n(byte, n));
        }
        7 => {
            let n = rng.random_range(1..16);
            let at = pos(rng, v);
            let random: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            v.splice(at..at, random);
        }
        // The start of this input, the rest of another seed.
        _ => {
            let other = seeds.choose(rng).unwrap();
            let (a, b) = (pos(rng, v), pos(rng, other));
            v.truncate(a);
            v.extend_from_slice(&other[b..]);
        }
    }
    v.truncate(MAX_LEN);
}

/// One to four byte-level changes to a seed.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds.choose(rng).unwrap().clone();
    mutate_bytes_in_place(rng, &mut v, seeds);
    v
}

/// How many changes to make: one half of the time, so that many mutants stay near a valid file.
fn changes(rng: &mut ChaCha8Rng) -> usize {
    if rng.random_bool(0.5) {
        1
    } else {
        rng.random_range(2..=4)
    }
}

pub fn mutate_bytes_in_place(rng: &mut ChaCha8Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..changes(rng) {
        mutate_bytes_once(rng, v, seeds);
    }
}

const NUMBERS: [&str; 12] = [
    "0",
    "1",
    "-1",
    "2",
    "7",
    "255",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999999",
    "1e308",
    "1.5",
];

const TOKENS: [&str; 24] = [
    "[",
    "]",
    "(",
    ")",
    "{",
    "}",
    ",",
    ":",
    "=",
    "'",
    "\"",
    "\\",
    "#",
    "\n",
    "null",
    "true",
    "[]",
    "{}",
    "range(",
    "Genotype(",
    "'sep_conv_3x3'",
    "\"none\"",
    "é",
    "\u{feff}",
];

const FIELDS: [&str; 8] = [
    "\"primitives\": [\"none\", \"max_pool_3x3\"],",
    "\"normal_concat\": [2, 3],",
    "\"edges\": [],",
    "\"concat\": range(2, 6),",
    "normal=[('skip_connect', 0)],",
    "reduce_concat=range(0, 99999999999),",
    "x=",
    "(('sep_conv_3x3', 0), ('skip_connect', 1)),",
];

/// The digit runs of `v`, as `start..end`.
fn digit_runs(v: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i].is_ascii_digit() {
            let start = i;
            while i < v.len() && v[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// One token-level change to text `v`.
pub fn mutate_text_once(rng: &mut ChaCha8Rng, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let runs = digit_runs(v);
    let structural: Vec<usize> = (0..v.len()).filter(|&i| b"[](){},:='\"".contains(&v[i])).collect();
    match rng.random_range(0..8) {
        0 if !runs.is_empty() => {
            let (a, b) = *runs.choose(rng).unwrap();
            v.splice(a..b, NUMBERS.choose(rng).unwrap().bytes());
        }
        1 if !structural.is_empty() => {
            v.remove(*structural.choose(rng).unwrap());
        }
        2 if !structural.is_empty() => {
            let i = *structural.choose(rng).unwrap();
            let n = if rng.random_bool(0.7) { rng.random_range(1..4) } else { rng.random_range(4..5000) };
            let byte = v[i];
            v.splice(i..i, std::iter::repeat_n(byte, n));
        }
        3 => {
            let at = char_boundary(v, pos(rng, v));
            v.splice(at..at, TOKENS.choose(rng).unwrap().bytes());
        }
        4 => {
            let at = char_boundary(v, pos(rng, v));
            v.splice(at..at, FIELDS.choose(rng).unwrap().bytes());
        }
        // A piece of this text or another seed pasted somewhere.
        5 => {
            let other = seeds.choose(rng).unwrap().clone();
            let (a, b) = chunk(rng, &other);
            let at = pos(rng, v);
            v.splice(at..at, other[a..b].iter().copied());
        }
        6 => {
            let (a, b) = chunk(rng, v);
            v.drain(a..b);
        }
        _ => mutate_bytes_once(rng, v, seeds),
    }
    v.truncate(MAX_LEN);
}

fn char_boundary(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && (v[i] & 0xC0) == 0x80 {
        i += 1;
    }
    i
}

/// One to four token-level changes to a seed.
pub fn mutate_text(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds.choose(rng).unwrap().clone();
    for _ in 0..changes(rng) {
        mutate_text_once(rng, &mut v, seeds);
    }
    v
}
