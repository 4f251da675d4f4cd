//! The fuzzing loop: a seeded mutation fuzzer on stable Rust, time-bounded, that feeds each
//! input to a reader and requires that it neither panics, nor hangs, nor allocates without
//! bound. Allocation is measured by a counting global allocator armed on the fuzzing thread
//! only, so the other tests of this binary, on other threads, are neither counted nor slowed.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct CountingAlloc;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // try_with: the allocator also runs while thread-locals are torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.get() + delta;
            LIVE.set(live);
            PEAK.set(PEAK.get().max(live));
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Runs `f` on this thread and returns the most bytes it held at once (through Rust's
/// allocator; libtorch's tensors are not counted, hence the readers' own checks of sizes).
pub fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.set(0);
    PEAK.set(0);
    ARMED.set(true);
    let out = f();
    ARMED.set(false);
    (out, PEAK.get().max(0) as usize)
}

/// The most a reader may hold for an input of `len` bytes.
pub fn allocation_limit(len: usize) -> usize {
    (64 << 20) + 16 * len
}

/// Longest one input may take (debug build, a loaded machine), and how long the watchdog
/// waits before it calls a reader stuck.
const SLOW_INPUT: Duration = Duration::from_secs(3);
const STUCK: Duration = Duration::from_secs(20);

/// What a reader made of an input.
pub enum Verdict {
    Accepted,
    Refused,
}

/// One fuzz target: seeds, how to derive an input from them, how to feed it to the reader
/// (the input is also in the file the path names).
pub struct Target {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    pub mutate: fn(&mut ChaCha8Rng, &[Vec<u8>]) -> Vec<u8>,
    pub check: fn(&Path, &[u8]) -> Verdict,
    /// Share of the fuzzing time (`CNAS_FUZZ_SECS`, 48 s in all by default).
    pub share: f64,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

pub fn work_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Feeds `bytes` (written to `file` first, so a crash leaves it there) to the target; the
/// failure message, if any.
fn try_one(target: &Target, file: &Path, bytes: &[u8]) -> Result<Verdict, String> {
    std::fs::write(file, bytes).unwrap();
    let started = Instant::now();
    let (outcome, peak) = peak_bytes(|| catch_unwind(AssertUnwindSafe(|| (target.check)(file, bytes))));
    let took = started.elapsed();
    let verdict = outcome.map_err(|p| {
        let msg =
            p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        format!("panicked: {}", msg.unwrap_or_default())
    })?;
    if peak > allocation_limit(bytes.len()) {
        return Err(format!("allocated {peak} bytes for a {}-byte input", bytes.len()));
    }
    if took > SLOW_INPUT {
        return Err(format!("took {took:?}"));
    }
    Ok(verdict)
}

/// Runs `target` for its share of the time; panics naming the seed, the iteration and the
/// saved input at the first failure. Every seed must be accepted as it is.
pub fn fuzz(target: Target) {
    let total = env_u64("CNAS_FUZZ_SECS").unwrap_or(48) as f64;
    let budget = Duration::from_secs_f64(total * target.share);
    let seed = env_u64("CNAS_FUZZ_SEED").unwrap_or_else(|| rand::rng().random());
    let dir = work_dir(target.name);
    let file = dir.join("input");
    eprintln!(
        "fuzz {}: seed {seed} (replay: CNAS_FUZZ_SEED={seed}), {budget:?}; a crash leaves its input in {}",
        target.name,
        file.display()
    );
    for (i, s) in target.seeds.iter().enumerate() {
        match try_one(&target, &file, s) {
            Ok(Verdict::Accepted) => {}
            Ok(Verdict::Refused) => panic!("fuzz {}: seed {i} is refused", target.name),
            Err(e) => panic!("fuzz {}: seed {i} {e}", target.name),
        }
    }
    let heartbeat = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let (heartbeat, done) = (heartbeat.clone(), done.clone());
        std::thread::Builder::new()
            .name(format!("fuzz-{}", target.name))
            .spawn(move || run_loop(&target, seed, budget, &dir, &heartbeat, &done))
            .unwrap()
    };
    watch(&heartbeat, &done, &file);
    if let Err(p) = worker.join() {
        std::panic::resume_unwind(p);
    }
}

/// Waits for the worker; panics when one input holds it longer than [`STUCK`].
fn watch(heartbeat: &AtomicU64, done: &AtomicBool, file: &Path) {
    let (mut last, mut since) = (u64::MAX, Instant::now());
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let now = heartbeat.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > STUCK {
            panic!("fuzz: input {now} hangs (over {STUCK:?}); it is in {}", file.display());
        }
    }
}

fn run_loop(
    target: &Target,
    seed: u64,
    budget: Duration,
    dir: &Path,
    heartbeat: &AtomicU64,
    done: &AtomicBool,
) {
    let _finish = Finish(done);
    let file = dir.join("input");
    let started = Instant::now();
    let (mut accepted, mut refused, mut iteration) = (0u64, 0u64, 0u64);
    while started.elapsed() < budget {
        heartbeat.store(iteration, Ordering::SeqCst);
        // One generator per input, so that a failing one is replayed from (seed, iteration).
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let input = (target.mutate)(&mut rng, &target.seeds);
        match try_one(target, &file, &input) {
            Ok(Verdict::Accepted) => accepted += 1,
            Ok(Verdict::Refused) => refused += 1,
            Err(e) => {
                let saved = dir.join(format!("failure-{seed}-{iteration}"));
                std::fs::write(&saved, &input).unwrap();
                panic!(
                    "fuzz {}: input {iteration} of seed {seed} {e}; the input is in {}",
                    target.name,
                    saved.display()
                );
            }
        }
        iteration += 1;
    }
    eprintln!(
        "fuzz {}: {iteration} inputs in {:.1?} ({accepted} accepted, {refused} refused)",
        target.name,
        started.elapsed()
    );
}

/// Tells the watchdog the worker has ended, however it ends.
struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
