//! The curriculum: the operation order (drawn as released), the stages and their masks, and
//! the seeded random streams of a search.
use super::*;

/// How the search space grows from stage to stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CurriculumMode {
    /// Start with one operation (sep_conv_3x3) and add one per stage, in an order drawn from
    /// the seed: 8 stages.
    Op,
    /// Grow the number of searched nodes from 1 to all, with every operation.
    Node,
    /// One stage over the full space (the ablation without curriculum).
    Fixed,
    /// Random search with weight sharing at the cost of `op`: the supernet trained on uniform
    /// samples for op's weight steps, then uniform candidates scored with op's held-out images.
    Random,
}

/// An operation order given by hand must list each of the 8 DARTS operations once.
pub(super) fn check_op_order(order: &[Primitive]) -> Result<()> {
    let mut sorted = order.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut all = Primitive::DARTS.to_vec();
    all.sort();
    if order.len() != Primitive::DARTS.len() || sorted != all {
        let names: Vec<&str> = Primitive::DARTS.iter().map(|p| p.name()).collect();
        return Err(Error::BadOption(format!(
            "--op-order must list each of the 8 operations once ({})",
            names.join(",")
        )));
    }
    Ok(())
}

/// The released code's operation order for `seed`: the DARTS list's first operation
/// (sep_conv_3x3), then the other seven permuted by `torch.randperm(7)` from a generator
/// seeded with `seed`.
pub fn released_op_order(seed: u64) -> Result<Vec<Primitive>> {
    let (first, rest) =
        Primitive::DARTS.split_first().ok_or_else(|| Error::BadOption("no primitives".into()))?;
    let perm = crate::data::rng::torch_randperm(rest.len(), seed)?;
    Ok(std::iter::once(*first).chain(perm.into_iter().map(|i| rest[i])).collect())
}

/// One stage of the curriculum: which ops (a mask over the supernet's primitive list) and how
/// many nodes the controllers choose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub allowed: Vec<bool>,
    pub searched_nodes: usize,
    /// Names of the allowed ops, in curriculum order (for logs and metrics).
    pub ops: Vec<String>,
}

/// The stages of a curriculum over `primitives` (the supernet's list; every mask indexes it)
/// with the operation order `order` (`--mode op`: stage k allows the first k operations of it).
pub fn curriculum(
    mode: CurriculumMode,
    primitives: &[Primitive],
    order: &[Primitive],
    nodes: usize,
) -> Vec<Stage> {
    let mask = |k: usize| -> Vec<bool> { primitives.iter().map(|p| order[..k].contains(p)).collect() };
    let names = |k: usize| -> Vec<String> { order[..k].iter().map(|p| p.name().to_string()).collect() };
    match mode {
        CurriculumMode::Op => (1..=order.len())
            .map(|k| Stage { allowed: mask(k), searched_nodes: nodes, ops: names(k) })
            .collect(),
        CurriculumMode::Node => (1..=nodes)
            .map(|n| Stage { allowed: mask(order.len()), searched_nodes: n, ops: names(order.len()) })
            .collect(),
        CurriculumMode::Fixed | CurriculumMode::Random => {
            vec![Stage { allowed: mask(order.len()), searched_nodes: nodes, ops: names(order.len()) }]
        }
    }
}

/// The random stream of one (stage, phase, epoch): every draw of a step comes from here.
pub fn stream(seed: u64, stage: u64, phase: u64, epoch: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stage.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (phase << 56) ^ epoch);
    rng
}
