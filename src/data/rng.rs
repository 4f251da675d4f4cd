//! Seeded random streams. Every random choice the data pipeline makes comes from a stream keyed
//! by (seed, purpose, epoch, index), never from a shared generator, so the result does not depend
//! on which worker thread makes the choice or in what order the threads run.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator handed to [`super::Source::get`] for one sample's augmentation.
pub type SampleRng = ChaCha8Rng;

/// What a stream is for; part of its key so that, say, the shuffle of epoch 3 and the
/// augmentation of sample 3 never share a stream.
#[derive(Clone, Copy)]
#[repr(u64)]
pub(crate) enum Purpose {
    Shuffle = 2,
    Sample = 3,
    Subset = 4,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 stream whose 256-bit key is a hash of the four coordinates.
pub(crate) fn stream(seed: u64, purpose: Purpose, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut h = splitmix64(seed);
    h = splitmix64(h ^ purpose as u64);
    h = splitmix64(h ^ epoch);
    h = splitmix64(h ^ index);
    let mut key = [0u8; 32];
    for (k, chunk) in key.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&splitmix64(h ^ (k as u64 + 1)).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The augmentation stream of dataset sample `index` in `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> SampleRng {
    stream(seed, Purpose::Sample, epoch, index as u64)
}

/// Fisher–Yates with our own index draws, so the permutation depends only on the stream.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    use rand::Rng;
    for i in (1..items.len()).rev() {
        let j = rng.random_range(0..=i);
        items.swap(i, j);
    }
}

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`, drawn by libtorch's own
/// CPU generator: the draws the released CNAS code makes (its search split and its curriculum
/// order), reproduced for the same seed.
pub fn torch_randperm(n: usize, seed: u64) -> crate::error::Result<Vec<usize>> {
    let mut out = vec![0i64; n];
    // SAFETY: `out` has room for the n values the shim writes.
    let rc = unsafe { crate::sys::cnas_randperm(n as i64, seed, out.as_mut_ptr()) };
    if rc != 0 {
        return Err(crate::error::Error::Torch(tch::TchError::Torch(format!(
            "randperm({n}) with seed {seed} failed"
        ))));
    }
    Ok(out.into_iter().map(|i| i as usize).collect())
}
