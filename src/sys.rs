//! The one door to the C++ shims in `csrc/` (libtorch calls tch 0.24 does not expose): every
//! `extern "C"` declaration of the crate, and the helpers their callers share. Nothing else in
//! the crate declares foreign functions; the modules that need a shim ([`crate::amp`],
//! [`crate::optim`], [`crate::dist`], [`crate::data`]'s randperm, [`crate::export`]'s
//! TorchScript tracing) call these.
//!
//! # Safety
//! The contract on both sides (`csrc/cnas.h` says it for C++):
//! - Tensors cross as `at::Tensor*`, the handle tch's [`Tensor::as_ptr`] gives (torch-sys's
//!   `C_tensor`). A shim borrows them for the call only, copying the handle (a new reference)
//!   when it keeps one, so the caller must keep its tensors alive for the call's duration: hold
//!   the `Tensor`s, not just the list from [`pointers`].
//! - A tensor a shim returns is a new heap `at::Tensor` handed over to Rust; [`take_tensor`]
//!   wraps it, and tch frees it.
//! - No C++ exception crosses: a failed call returns -1 (or null) and keeps its message in a
//!   thread-local the shims share, read with [`last_error`] on the same thread right after.
//! - Group and gradient-sync handles (`cnas_dist_*`) are opaque, created and destroyed once by
//!   their owner in [`crate::dist`].
use std::ffi::{c_char, c_int, c_void, CStr};

use tch::Tensor;

extern "C" {
    // csrc/cnas.h (defined in csrc/optim.cpp)
    pub(crate) fn cnas_last_error() -> *const c_char;

    // csrc/amp.cpp
    pub(crate) fn cnas_autocast_enter_bf16(cuda: c_int) -> c_int;
    pub(crate) fn cnas_autocast_exit(cuda: c_int, previous: c_int) -> c_int;
    pub(crate) fn cnas_autocast_enabled(cuda: c_int) -> c_int;

    // csrc/jit.cpp
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cnas_jit_trace_save(
        names: *const *const c_char,
        tensors: *mut *mut c_void,
        buffer: *const c_int,
        n: c_int,
        input: *mut c_void,
        forward: extern "C" fn(data: *mut c_void, input: *mut c_void) -> *mut c_void,
        data: *mut c_void,
        extra_names: *const *const c_char,
        extra_values: *const *const c_char,
        extra_lens: *const usize,
        n_extra: c_int,
        sink: extern "C" fn(data: *mut c_void, bytes: *const c_char, len: usize),
    ) -> c_int;

    // csrc/random.cpp
    pub(crate) fn cnas_randperm(n: i64, seed: u64, out: *mut i64) -> c_int;

    // csrc/optim.cpp
    pub(crate) fn cnas_grads_set_none(params: *mut *mut c_void, n: c_int) -> c_int;
    pub(crate) fn cnas_grads_zero(params: *mut *mut c_void, n: c_int, materialize: *const c_int) -> c_int;
    pub(crate) fn cnas_fused_sgd(
        params: *mut *mut c_void,
        bufs: *mut *mut c_void,
        n: c_int,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: c_int,
        first_step: c_int,
    ) -> c_int;
    pub(crate) fn cnas_clip_grad_norm(params: *mut *mut c_void, n: c_int, max_norm: f64) -> *mut c_void;

    // csrc/dist.cpp
    pub(crate) fn cnas_dist_init(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        size: c_int,
        nccl: c_int,
        timeout_ms: i64,
        host_store: c_int,
        prefix: *const c_char,
    ) -> *mut c_void;
    pub(crate) fn cnas_dist_destroy(group: *mut c_void);
    pub(crate) fn cnas_dist_broadcast(
        group: *mut c_void,
        tensors: *mut *mut c_void,
        n: c_int,
        root: c_int,
    ) -> c_int;
    pub(crate) fn cnas_dist_allreduce_sum(group: *mut c_void, tensors: *mut *mut c_void, n: c_int) -> c_int;
    pub(crate) fn cnas_dist_barrier(group: *mut c_void) -> c_int;
    pub(crate) fn cnas_dist_sync_batch_norm(
        group: *mut c_void,
        x: *mut c_void,
        weight: *mut c_void,
        bias: *mut c_void,
        running_mean: *mut c_void,
        running_var: *mut c_void,
        momentum: f64,
        eps: f64,
    ) -> *mut c_void;
    pub(crate) fn cnas_dist_has_nccl() -> c_int;
    pub(crate) fn cnas_dist_grad_sync_new(
        group: *mut c_void,
        params: *mut *mut c_void,
        n: c_int,
        bucket_bytes: i64,
    ) -> *mut c_void;
    pub(crate) fn cnas_dist_grad_sync_prepare(sync: *mut c_void) -> c_int;
    pub(crate) fn cnas_dist_grad_sync_finish(sync: *mut c_void) -> c_int;
    pub(crate) fn cnas_dist_grad_sync_free(sync: *mut c_void);
    pub(crate) fn cnas_dist_grad_sync_buckets(sync: *mut c_void) -> c_int;
}

/// The handle of `t` for a shim (borrowed: `t` must outlive the call).
pub(crate) fn tensor_ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// As [`tensor_ptr`], null for an absent optional tensor.
pub(crate) fn optional_ptr(t: Option<&Tensor>) -> *mut c_void {
    t.map_or(std::ptr::null_mut(), tensor_ptr)
}

/// The handles of `tensors`, as a shim's `void**` list (and its length from `len()`).
pub(crate) fn pointers<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Vec<*mut c_void> {
    tensors.into_iter().map(tensor_ptr).collect()
}

/// The message of this thread's last failed shim call (empty if none), whole: C++ messages of
/// libtorch carry a backtrace after their first lines, which callers cut as they need.
pub(crate) fn last_error() -> String {
    // SAFETY: the shim returns a pointer to its thread-local, NUL-terminated message, valid
    // until this thread's next shim call; it is copied before anything else runs.
    unsafe { CStr::from_ptr(cnas_last_error()) }.to_string_lossy().into_owned()
}

/// Takes ownership of a tensor a shim returned; `None` for null (the call failed).
///
/// # Safety
/// `ptr` must be null or a new `at::Tensor*` that a shim handed over and nothing else owns.
pub(crate) unsafe fn take_tensor(ptr: *mut c_void) -> Option<Tensor> {
    // SAFETY: per the contract above.
    (!ptr.is_null()).then(|| unsafe { Tensor::from_ptr(ptr.cast()) })
}
