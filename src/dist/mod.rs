//! Collectives between the processes of a data-parallel run, through libtorch's own c10d
//! (`csrc/dist.cpp`): a TCPStore rendezvous at `MASTER_ADDR:MASTER_PORT`, then Gloo for CPU
//! tensors or NCCL for CUDA tensors.
//!
//! A process takes part when `WORLD_SIZE` > 1 is set (by `torchrun`, `cnas launch` or by hand,
//! with `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`); otherwise nothing here runs. The
//! store is found as `init_process_group("env://")` finds it: under torchrun
//! (`TORCHELASTIC_USE_AGENT_STORE=True`) the launcher of node 0 already hosts it at
//! `MASTER_PORT` and every rank connects as a client; otherwise rank 0 hosts it.
//! Every collective waits at most the group's timeout (`--dist-timeout`): a rank that dies or
//! never connects makes the others fail with an error naming the operation, never hang.
use std::cell::RefCell;
use std::ffi::{c_int, c_void, CString};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::sys;

mod parallel;
pub use parallel::{sorted_variables, DataParallel};

pub use crate::error::DistError;

/// Where this process sits in a distributed run, from torchrun's environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Processes on this node (`LOCAL_WORLD_SIZE`), when the launcher says.
    pub local_world_size: Option<usize>,
    /// This node's rank among the nodes (`GROUP_RANK`), when the launcher says.
    pub node_rank: Option<usize>,
    /// Who hosts the rendezvous store, and under which key prefix.
    pub store: StoreHost,
}

/// Who hosts the TCPStore at `MASTER_ADDR:MASTER_PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHost {
    /// Rank 0 (hand-set variables, `cnas launch`, torchrun without a shared store).
    Rank0,
    /// torchrun's agent on node 0 (`TORCHELASTIC_USE_AGENT_STORE=True`): its store outlives
    /// the workers and is shared by torchrun's own rendezvous.
    Agent {
        /// Worker restarts so far (`TORCHELASTIC_RESTART_COUNT`, `--max-restarts`).
        restart_count: usize,
        /// `TORCHELASTIC_RUN_ID` (torchrun's `--rdzv-id`, "none" by default).
        run_id: Option<String>,
    },
}

impl StoreHost {
    /// The prefix of this attempt's keys: the agent's store keeps the keys of a failed attempt
    /// after a restart, so each attempt takes fresh ones (torchelastic's own
    /// `/worker/attempt_N`); a store rank 0 hosts is new and needs none.
    pub fn key_prefix(&self) -> String {
        match self {
            StoreHost::Rank0 => String::new(),
            StoreHost::Agent { restart_count, .. } => format!("/worker/attempt_{restart_count}"),
        }
    }
}

impl DistEnv {
    /// `None` when `WORLD_SIZE` is unset or 1 (a single process: nothing distributed happens).
    pub fn from_env() -> Result<Option<DistEnv>, DistError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`], reading variables through `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>, DistError> {
        fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, DistError> {
            value
                .trim()
                .parse()
                .map_err(|_| DistError::BadEnv(format!("{name}={value:?} is not a non-negative integer")))
        }
        let Some(ws) = get("WORLD_SIZE") else { return Ok(None) };
        let world_size: usize = parse("WORLD_SIZE", &ws)?;
        if world_size == 0 {
            return Err(DistError::BadEnv("WORLD_SIZE must be at least 1".into()));
        }
        if world_size == 1 {
            return Ok(None);
        }
        let need = |name: &str| {
            get(name)
                .ok_or_else(|| DistError::BadEnv(format!("WORLD_SIZE={world_size} is set but {name} is not")))
        };
        let rank: usize = parse("RANK", &need("RANK")?)?;
        if rank >= world_size {
            return Err(DistError::BadEnv(format!("RANK={rank} does not exist in WORLD_SIZE={world_size}")));
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v)?,
            None => rank,
        };
        let master_addr = need("MASTER_ADDR")?;
        let master_port: u16 = parse("MASTER_PORT", &need("MASTER_PORT")?)?;
        if master_port == 0 {
            return Err(DistError::BadEnv("MASTER_PORT must not be 0".into()));
        }
        let local_world_size = match get("LOCAL_WORLD_SIZE") {
            Some(v) => {
                let n: usize = parse("LOCAL_WORLD_SIZE", &v)?;
                if n == 0 || n > world_size || local_rank >= n {
                    return Err(DistError::BadEnv(format!(
                        "LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={n} and WORLD_SIZE={world_size}: \
                         the local rank must be below the processes on this node, which are at most the world size"
                    )));
                }
                Some(n)
            }
            None => None,
        };
        let node_rank = get("GROUP_RANK").map(|v| parse("GROUP_RANK", &v)).transpose()?;
        // Exactly the test of torch.distributed.rendezvous._torchelastic_use_agent_store.
        let store = if get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True") {
            let restart_count = match get("TORCHELASTIC_RESTART_COUNT") {
                Some(v) => parse("TORCHELASTIC_RESTART_COUNT", &v)?,
                None => 0,
            };
            StoreHost::Agent { restart_count, run_id: get("TORCHELASTIC_RUN_ID") }
        } else {
            StoreHost::Rank0
        };
        Ok(Some(DistEnv {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            local_world_size,
            node_rank,
            store,
        }))
    }

    /// Whether this process hosts the store: rank 0, unless torchrun's agent does.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && self.store == StoreHost::Rank0
    }

    /// Where this process sits and who hosts the store, for the log: "rank 1 of 4 (node 1,
    /// local rank 0 of 2)…".
    pub fn describe(&self) -> String {
        let mut place = Vec::new();
        if let Some(node) = self.node_rank {
            place.push(format!("node {node}"));
        }
        place.push(match self.local_world_size {
            Some(n) => format!("local rank {} of {n}", self.local_rank),
            None => format!("local rank {}", self.local_rank),
        });
        let host = match &self.store {
            StoreHost::Rank0 if self.rank == 0 => "hosted here".to_string(),
            StoreHost::Rank0 => "hosted by rank 0".to_string(),
            StoreHost::Agent { restart_count, run_id } => format!(
                "hosted by torchrun's agent, run {}, attempt {restart_count}",
                run_id.as_deref().unwrap_or("none")
            ),
        };
        format!(
            "rank {} of {} ({}), store {}:{} {host}",
            self.rank,
            self.world_size,
            place.join(", "),
            self.master_addr,
            self.master_port
        )
    }
}

/// Whether this build of cnas carries the NCCL backend (it needs CUDA and NCCL headers at
/// build time).
pub fn has_nccl() -> bool {
    // SAFETY: a plain C call without arguments.
    unsafe { sys::cnas_dist_has_nccl() == 1 }
}

/// One process group: this process's handle on the collectives of the run.
pub struct ProcessGroup {
    ptr: NonNull<c_void>,
    rank: usize,
    world_size: usize,
    /// Where collectives run: NCCL needs CUDA tensors, Gloo CPU tensors.
    device: Device,
    timeout: Duration,
}

// SAFETY: the c10d objects behind `ptr` are thread-safe for calls issued in the same order on
// every rank; cnas issues them from one thread at a time (the training loop).
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("device", &self.device)
            .finish()
    }
}

fn last_error() -> String {
    let text = sys::last_error();
    // c10d messages carry a C++ backtrace after the first lines; the first line says it.
    let text = text.trim().lines().take(2).collect::<Vec<_>>().join(" ");
    // c10's "Exception raised from wait at Work.cpp:93 (most recent call first):" only
    // introduces that backtrace.
    match text.find(" Exception raised from ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl ProcessGroup {
    /// Joins the run described by `env`: NCCL when `device` is CUDA, Gloo otherwise. Waits at
    /// most `timeout` for the other ranks.
    pub fn init(env: &DistEnv, device: Device, timeout: Duration) -> Result<Self, DistError> {
        let connect_error = |message: String| DistError::Connect {
            rank: env.rank,
            world_size: env.world_size,
            addr: env.master_addr.clone(),
            port: env.master_port,
            timeout_s: timeout.as_secs(),
            message,
        };
        let nccl = device.is_cuda();
        if nccl && !has_nccl() {
            return Err(DistError::BadEnv(
                "this cnas was built without NCCL; run on the CPU (--device cpu) or rebuild where the CUDA and NCCL headers are"
                    .into(),
            ));
        }
        let addr = CString::new(env.master_addr.as_str())
            .map_err(|_| DistError::BadEnv("MASTER_ADDR contains a NUL byte".into()))?;
        // Slashes, letters and digits: never a NUL.
        let prefix = CString::new(env.store.key_prefix()).unwrap_or_default();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        // SAFETY: `addr` and `prefix` outlive the call; the shim copies them.
        let ptr = unsafe {
            sys::cnas_dist_init(
                addr.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                c_int::from(nccl),
                timeout_ms,
                c_int::from(env.hosts_store()),
                prefix.as_ptr(),
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| connect_error(last_error()))?;
        Ok(ProcessGroup { ptr, rank: env.rank, world_size: env.world_size, device, timeout })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The device collectives run on (small host values travel through tensors there).
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    fn check(&self, rc: c_int, op: &'static str) -> Result<(), DistError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(DistError::Collective {
                rank: self.rank,
                op,
                timeout_s: self.timeout.as_secs(),
                message: last_error(),
            })
        }
    }

    /// Replaces `tensors` (contiguous, on the group's device) with rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<(), DistError> {
        // Every tensor must be contiguous and on the group's device.
        let mut ptrs = sys::pointers(tensors);
        // SAFETY: the pointers are live tch tensors for the duration of the call.
        let rc = unsafe {
            sys::cnas_dist_broadcast(self.ptr.as_ptr(), ptrs.as_mut_ptr(), ptrs.len() as c_int, root as c_int)
        };
        self.check(rc, "broadcast")
    }

    /// Sums `tensors` (contiguous, on the group's device) over the ranks, in place.
    pub fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        let mut ptrs = sys::pointers(tensors);
        // SAFETY: as in `broadcast`.
        let rc = unsafe {
            sys::cnas_dist_allreduce_sum(self.ptr.as_ptr(), ptrs.as_mut_ptr(), ptrs.len() as c_int)
        };
        self.check(rc, "all-reduce")
    }

    pub fn barrier(&self) -> Result<(), DistError> {
        // SAFETY: a live group.
        let rc = unsafe { sys::cnas_dist_barrier(self.ptr.as_ptr()) };
        self.check(rc, "barrier")
    }

    /// Sums of `values` over the ranks (a host round trip: for per-epoch numbers and rewards).
    pub fn sum_f64(&self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce_sum(std::slice::from_ref(&t))?;
        Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu)).unwrap_or_default())
    }

    /// Means of `values` over the ranks.
    pub fn mean_f64(&self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        let n = self.world_size as f64;
        Ok(self.sum_f64(values)?.into_iter().map(|v| v / n).collect())
    }

    /// Rank 0's `values` on every rank.
    pub fn broadcast_i64(&self, values: &[i64]) -> Result<Vec<i64>, DistError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.broadcast(std::slice::from_ref(&t), 0)?;
        Ok(Vec::<i64>::try_from(&t.to_device(Device::Cpu)).unwrap_or_default())
    }

    /// Checks that every rank holds the same `values` (e.g. a weights checksum, an epoch
    /// number); on every rank an error naming `what` if any rank differs from rank 0.
    pub fn check_same(&self, what: &str, values: &[i64]) -> Result<(), DistError> {
        let root = self.broadcast_i64(values)?;
        let differs = f64::from(u8::from(root != values));
        let ranks_differing = self.sum_f64(&[differs])?[0];
        if ranks_differing > 0.0 {
            return Err(DistError::Diverged(format!(
                "{what}: {ranks_differing} rank(s) differ from rank 0 (rank {} holds {values:?}, rank 0 {root:?})",
                self.rank
            )));
        }
        Ok(())
    }

    /// Averages the gradients of `params` over the ranks (bucketed; see [`Buckets`]).
    /// Parameters without a gradient are left out; every rank must have the same ones.
    pub fn average_gradients(&self, params: &[Tensor], bucket_bytes: usize) -> Result<(), DistError> {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        let scale = 1.0 / self.world_size as f64;
        Buckets::new(&grads, bucket_bytes).run(&grads, self.device, |flat| {
            self.all_reduce_sum(std::slice::from_ref(flat))?;
            let _ = flat.g_mul_scalar_(scale);
            Ok(())
        })
    }

    /// Copies rank 0's values of `tensors` (weights, buffers) to every rank, bucketed.
    pub fn broadcast_from_main(&self, tensors: &[Tensor], bucket_bytes: usize) -> Result<(), DistError> {
        Buckets::new(tensors, bucket_bytes)
            .run(tensors, self.device, |flat| self.broadcast(std::slice::from_ref(flat), 0))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by cnas_dist_init, destroyed once.
        unsafe { sys::cnas_dist_destroy(self.ptr.as_ptr()) }
    }
}

/// Gradient averaging overlapped with the backward pass: hooks on the parameters copy each
/// gradient into a flat bucket as autograd produces it and start a bucket's all-reduce as soon
/// as it is complete, while the backward pass goes on (PyTorch DDP's reducer, in
/// `csrc/dist.cpp`). The first step buckets the parameters in reverse order and records the
/// order their gradients arrive in; from the second on, every rank buckets in the order rank 0
/// recorded. For a fixed set of parameters that all
/// get gradients every step (a training network); the supernet uses
/// [`ProcessGroup::average_gradients`].
pub struct GradSync {
    ptr: NonNull<c_void>,
    group: Arc<ProcessGroup>,
    /// Keeps the parameters the hooks sit on alive as long as the hooks.
    _params: Vec<Tensor>,
    /// Whether the bucket layout has been reported (after the first step).
    reported: std::cell::Cell<bool>,
}

impl GradSync {
    pub fn new(group: Arc<ProcessGroup>, params: &[Tensor], bucket_bytes: usize) -> Result<Self, DistError> {
        let params: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
        let mut ptrs = sys::pointers(&params);
        let cap = i64::try_from(bucket_bytes).unwrap_or(i64::MAX);
        // SAFETY: live tensors; the shim keeps its own references to them.
        let ptr = unsafe {
            sys::cnas_dist_grad_sync_new(group.ptr.as_ptr(), ptrs.as_mut_ptr(), ptrs.len() as c_int, cap)
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| DistError::Collective {
            rank: group.rank,
            op: "gradient hooks",
            timeout_s: group.timeout.as_secs(),
            message: last_error(),
        })?;
        Ok(GradSync { ptr, group, _params: params, reported: std::cell::Cell::new(false) })
    }

    /// Runs `backward` (the backward pass) with the gradients averaged over the ranks as they
    /// come; on return every parameter's `.grad` holds the mean over the ranks.
    pub fn backward(&self, backward: impl FnOnce() -> Result<(), tch::TchError>) -> Result<(), crate::Error> {
        // SAFETY: a live GradSync.
        self.group
            .check(unsafe { sys::cnas_dist_grad_sync_prepare(self.ptr.as_ptr()) }, "gradient all-reduce")?;
        let result = backward();
        // Always finish: the other ranks wait for this rank's buckets.
        // SAFETY: as above.
        let finished = self
            .group
            .check(unsafe { sys::cnas_dist_grad_sync_finish(self.ptr.as_ptr()) }, "gradient all-reduce");
        result?;
        finished?;
        if !self.reported.replace(true) {
            // SAFETY: as above.
            let buckets = unsafe { sys::cnas_dist_grad_sync_buckets(self.ptr.as_ptr()) };
            tracing::info!("gradients in {buckets} bucket(s), each all-reduced as soon as the backward pass has filled it");
        }
        Ok(())
    }

    /// Buckets of the current layout.
    pub fn buckets(&self) -> usize {
        // SAFETY: a live GradSync.
        unsafe { sys::cnas_dist_grad_sync_buckets(self.ptr.as_ptr()) as usize }
    }
}

impl Drop for GradSync {
    fn drop(&mut self) {
        // SAFETY: created by cnas_dist_grad_sync_new, freed once (it removes its hooks).
        unsafe { sys::cnas_dist_grad_sync_free(self.ptr.as_ptr()) }
    }
}

/// Tensors cut into few flat buffers, so a collective moves megabytes at a time instead of
/// one small tensor each (DDP's gradient buckets): tensors are taken in order and a bucket
/// closes when it reaches `bucket_bytes` or the dtype changes.
pub struct Buckets {
    /// Per bucket, indices into the tensor list.
    groups: Vec<Vec<usize>>,
}

impl Buckets {
    pub fn new(tensors: &[Tensor], bucket_bytes: usize) -> Self {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0usize;
        let mut kind: Option<Kind> = None;
        for (i, t) in tensors.iter().enumerate() {
            let size = t.numel() * t.kind().elt_size_in_bytes();
            let k = t.kind();
            let full = bytes >= bucket_bytes || kind != Some(k);
            match groups.last_mut() {
                Some(g) if !full => g.push(i),
                _ => {
                    groups.push(vec![i]);
                    bytes = 0;
                }
            }
            bytes += size;
            kind = Some(k);
        }
        Buckets { groups }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// For each bucket: flattens its tensors into one buffer on `device` (where the collective
    /// runs; the CPU controllers of a GPU run travel through it), runs `op` on it, copies the
    /// result back into the tensors.
    pub fn run(
        &self,
        tensors: &[Tensor],
        device: Device,
        mut op: impl FnMut(&mut Tensor) -> Result<(), DistError>,
    ) -> Result<(), DistError> {
        tch::no_grad(|| {
            for group in &self.groups {
                let parts: Vec<Tensor> = group.iter().map(|&i| tensors[i].reshape([-1])).collect();
                let mut flat = Tensor::cat(&parts, 0).to_device(device);
                op(&mut flat)?;
                let mut offset = 0i64;
                for &i in group {
                    let t = &tensors[i];
                    let n = t.numel() as i64;
                    let piece = flat.narrow(0, offset, n).view_as(t).to_device(t.device());
                    let mut dst = t.shallow_clone();
                    dst.copy_(&piece);
                    offset += n;
                }
            }
            Ok(())
        })
    }
}

/// A CRC-32C of the bytes of `tensors` (copied to the host): equal on two ranks exactly when
/// their values are bit-identical (up to the odd collision).
pub fn checksum(tensors: &[Tensor]) -> u32 {
    let mut crc = 0u32;
    for t in tensors {
        let host = t.detach().to_device(Device::Cpu).contiguous();
        let mut bytes = vec![0u8; host.numel() * host.kind().elt_size_in_bytes()];
        host.copy_data_u8(&mut bytes, host.numel());
        crc = crc32c::crc32c_append(crc, &bytes);
    }
    crc
}

/// What a [`SyncBatchNormScope`] shares with the BatchNorm layers of its thread: the group
/// they synchronise over, and the first error one met (a layer cannot return it).
struct SyncBatchNormState {
    group: Arc<ProcessGroup>,
    error: RefCell<Option<DistError>>,
}

impl SyncBatchNormState {
    fn check(&self) -> Result<(), DistError> {
        self.error.borrow_mut().take().map_or(Ok(()), Err)
    }
}

thread_local! {
    /// The scopes alive on this thread, the newest active. Per thread, not per process: the
    /// search and training loops run every forward pass on the thread that holds their scope
    /// (their helper threads load data and sample cells, no BatchNorm), and runs on other
    /// threads (tests side by side in one binary) keep their own BatchNorm.
    static SYNC_BATCH_NORM: RefCell<Vec<Rc<SyncBatchNormState>>> = const { RefCell::new(Vec::new()) };
}

/// The state of the scope active on this thread, if any.
fn active_sync_batch_norm() -> Option<Rc<SyncBatchNormState>> {
    SYNC_BATCH_NORM.with(|scopes| scopes.borrow().last().cloned())
}

/// While it lives, training-mode BatchNorm on the thread that created it computes its
/// statistics over every rank's batch (`--sync-bn`); dropping it (also on an early error)
/// returns to per-rank statistics. A run keeps its scope beside its network. It holds the
/// first error a synchronised BatchNorm met, for [`SyncBatchNormScope::check`]. It cannot
/// leave its thread (not `Send`).
#[must_use = "synchronised BatchNorm ends when the scope is dropped"]
pub struct SyncBatchNormScope {
    state: Rc<SyncBatchNormState>,
}

impl SyncBatchNormScope {
    pub fn new(group: Arc<ProcessGroup>) -> Self {
        let state = Rc::new(SyncBatchNormState { group, error: RefCell::new(None) });
        SYNC_BATCH_NORM.with(|scopes| scopes.borrow_mut().push(Rc::clone(&state)));
        SyncBatchNormScope { state }
    }

    /// The first error a synchronised BatchNorm of this scope met since the last call, if any
    /// (that layer fell back to this rank's statistics).
    pub fn take_error(&self) -> Option<DistError> {
        self.state.error.borrow_mut().take()
    }

    /// [`SyncBatchNormScope::take_error`] as a result.
    pub fn check(&self) -> Result<(), DistError> {
        self.state.check()
    }

    /// [`SyncBatchNormScope::check`] of the scope active on this thread (`Ok` when there is
    /// none): for steps that run inside a run's scope without holding it.
    pub fn check_active() -> Result<(), DistError> {
        active_sync_batch_norm().map_or(Ok(()), |state| state.check())
    }
}

impl Drop for SyncBatchNormScope {
    fn drop(&mut self) {
        // try_with: nothing to undo while the thread's locals are being torn down.
        let _ =
            SYNC_BATCH_NORM.try_with(|scopes| scopes.borrow_mut().retain(|s| !Rc::ptr_eq(s, &self.state)));
    }
}

/// Training-mode BatchNorm over every rank's batch, when a [`SyncBatchNormScope`] is active on
/// this thread; `None` otherwise (the caller runs the ordinary per-process BatchNorm). On a
/// failed collective the error is kept in the scope and `None` is returned.
pub fn sync_batch_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Option<Tensor> {
    let state = active_sync_batch_norm()?;
    let group = &state.group;
    // SAFETY: live tensors and group for the duration of the call; the result is null or a new
    // tensor handed over.
    let out = unsafe {
        sys::take_tensor(sys::cnas_dist_sync_batch_norm(
            group.ptr.as_ptr(),
            sys::tensor_ptr(x),
            sys::optional_ptr(weight),
            sys::optional_ptr(bias),
            sys::tensor_ptr(running_mean),
            sys::tensor_ptr(running_var),
            momentum,
            eps,
        ))
    };
    if out.is_none() {
        let err = DistError::Collective {
            rank: group.rank,
            op: "synchronised BatchNorm",
            timeout_s: group.timeout.as_secs(),
            message: last_error(),
        };
        state.error.borrow_mut().get_or_insert(err);
    }
    out
}

/// `--dist-timeout`: a number of seconds, or with a unit `s`, `m` or `h` (`90s`, `10m`).
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1.0),
        Some((i, 'm')) => (&s[..i], 60.0),
        Some((i, 'h')) => (&s[..i], 3600.0),
        _ => (s, 1.0),
    };
    match number.trim().parse::<f64>() {
        // try_from: a finite number past Duration's range (1e300h) is refused, not a panic.
        Ok(v) if v.is_finite() && v > 0.0 => {
            Duration::try_from_secs_f64(v * scale).map_err(|_| format!("'{s}' is too long a duration"))
        }
        _ => Err(format!("'{s}' is not a duration (e.g. 600, 90s, 10m, 1h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Option<DistEnv>, DistError> {
        let map: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_torchrun_variables_and_refuses_bad_ones() {
        assert_eq!(env(&[]).unwrap(), None);
        assert_eq!(env(&[("WORLD_SIZE", "1")]).unwrap(), None);
        let full = [
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
        ];
        let e = env(&full).unwrap().unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port), (2, 4, 0, 29500));
        assert!(
            env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]).is_err()
        );
        assert!(env(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "1")]).is_err());
        assert!(env(&[("WORLD_SIZE", "x")]).is_err());
        assert!(env(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")])
            .is_err());
        // Hand-set (or cnas launch): rank 0 hosts the store, keys without a prefix.
        assert_eq!(e.store, StoreHost::Rank0);
        assert!(!e.hosts_store() && e.store.key_prefix().is_empty());
        let zero = env(&[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")]);
        assert!(zero.unwrap().unwrap().hosts_store());
    }

    #[test]
    fn under_torchrun_the_agent_hosts_the_store() {
        let mut vars = vec![
            ("WORLD_SIZE", "4"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("GROUP_RANK", "0"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
            ("TORCHELASTIC_RUN_ID", "job7"),
        ];
        let e = env(&vars).unwrap().unwrap();
        assert_eq!((e.local_world_size, e.node_rank), (Some(2), Some(0)));
        assert_eq!(e.store, StoreHost::Agent { restart_count: 2, run_id: Some("job7".into()) });
        // Rank 0 connects to the agent's store, in this attempt's keys.
        assert!(!e.hosts_store());
        assert_eq!(e.store.key_prefix(), "/worker/attempt_2");
        assert!(e.describe().contains("node 0, local rank 0 of 2"), "{}", e.describe());
        assert!(e.describe().contains("torchrun's agent, run job7, attempt 2"), "{}", e.describe());
        // torchrun writes "False" when its rendezvous shares no store: rank 0 hosts one.
        vars[7].1 = "False";
        assert!(env(&vars).unwrap().unwrap().hosts_store());
        // A local rank outside this node's processes, or more local processes than ranks.
        vars[2].1 = "2";
        assert!(matches!(env(&vars), Err(DistError::BadEnv(m)) if m.contains("LOCAL_WORLD_SIZE=2")));
        vars[2].1 = "0";
        vars[3].1 = "5";
        assert!(env(&vars).is_err());
        vars[3].1 = "2";
        vars[7].1 = "True";
        vars[8].1 = "x";
        assert!(env(&vars).is_err());
    }

    #[test]
    fn timeouts_take_units() {
        assert_eq!(parse_timeout("600").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_timeout("0").is_err() && parse_timeout("soon").is_err());
    }

    /// A group of one process (Gloo on a free local port): enough for the scope's plumbing.
    fn solo_group() -> Arc<ProcessGroup> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = DistEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            local_world_size: None,
            node_rank: None,
            store: StoreHost::Rank0,
        };
        Arc::new(ProcessGroup::init(&env, Device::Cpu, Duration::from_secs(30)).unwrap())
    }

    #[test]
    fn sync_batch_norm_belongs_to_its_scope_and_thread() {
        // Training-mode BatchNorm of `x` (channels 3) when synchronised here, None otherwise.
        fn bn(x: &Tensor) -> Option<Tensor> {
            let (mean, var) = (
                Tensor::zeros([3], (Kind::Float, Device::Cpu)),
                Tensor::ones([3], (Kind::Float, Device::Cpu)),
            );
            sync_batch_norm(x, None, None, &mean, &var, 0.1, 1e-5)
        }
        let x = Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let bad = Tensor::ones([4, 3, 2], (Kind::Float, Device::Cpu));
        assert!(bn(&x).is_none(), "synchronised outside any scope");
        let scope = SyncBatchNormScope::new(solo_group());
        // One rank: the ordinary batch statistics.
        let y = bn(&x).expect("synchronised inside the scope");
        let none = None::<Tensor>;
        let expected = x.batch_norm(none.as_ref(), None, None, None, true, 0.1, 1e-5, false);
        assert!(y.allclose(&expected, 1e-4, 1e-5, false));
        // Another thread is outside the scope.
        std::thread::spawn(|| {
            assert!(bn(&Tensor::randn([4, 3, 2, 2], (Kind::Float, Device::Cpu))).is_none());
            assert!(SyncBatchNormScope::check_active().is_ok());
        })
        .join()
        .unwrap();
        // A failed collective (3-d input) falls back and leaves its error in the scope, once.
        assert!(bn(&bad).is_none());
        match scope.take_error() {
            Some(DistError::Collective { op, .. }) => assert_eq!(op, "synchronised BatchNorm"),
            other => panic!("expected the BatchNorm's error, got {other:?}"),
        }
        assert!(scope.check().is_ok() && SyncBatchNormScope::check_active().is_ok());
        assert!(bn(&bad).is_none());
        assert!(SyncBatchNormScope::check_active().is_err() && scope.check().is_ok());
        drop(scope);
        assert!(bn(&x).is_none(), "synchronised after the scope ended");
    }

    #[test]
    fn buckets_split_by_size_and_round_trip() {
        let ts: Vec<Tensor> =
            (0..5).map(|i| Tensor::full([10], i as f64, (Kind::Float, Device::Cpu))).collect();
        let b = Buckets::new(&ts, 80); // two tensors (80 bytes) per bucket
        assert_eq!(b.groups, vec![vec![0, 1], vec![2, 3], vec![4]]);
        b.run(&ts, Device::Cpu, |flat| {
            let _ = flat.g_add_scalar_(1.0);
            Ok(())
        })
        .unwrap();
        for (i, t) in ts.iter().enumerate() {
            assert_eq!(t.double_value(&[3]), i as f64 + 1.0);
        }
        let a = checksum(&ts);
        let _ = ts[4].shallow_clone().g_add_scalar_(1e-6);
        assert_ne!(a, checksum(&ts));
    }
}
