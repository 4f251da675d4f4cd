//! The published cells cnas knows by name, and what `--arch` accepts.
use super::*;

/// The canonical names [`published`] knows (aliases: `DARTS` = `DARTS_V2`, `NASNet-A`,
/// `AmoebaNet-A`, `PC-DARTS`, `P-DARTS`; case and `-`/`_` are ignored).
pub const PUBLISHED: &[&str] =
    &["CNAS", "DARTS_V1", "DARTS_V2", "ENAS", "NASNet", "AmoebaNet", "PC_DARTS", "PDARTS"];

/// A published genotype, stored as DARTS lists: edges 2k and 2k+1 feed node k+2.
pub(super) struct PublishedEntry {
    pub(super) name: &'static str,
    aliases: &'static [&'static str],
    normal: &'static [(&'static str, usize)],
    normal_concat: &'static [usize],
    reduce: &'static [(&'static str, usize)],
    reduce_concat: &'static [usize],
}

// One line per intermediate node: its two (op, from) inputs.
#[rustfmt::skip]
pub(super) const REGISTRY: &[PublishedEntry] = &[
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
