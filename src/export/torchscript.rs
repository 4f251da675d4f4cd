//! TorchScript export: the network's evaluation forward pass traced into a module that
//! `torch.jit.load` opens in Python or C++ without cnas (`csrc/jit.cpp`).
//!
//! The module follows `torch.jit.trace(model.eval(), x)`'s conventions: the weights are named
//! parameters and buffers of nested submodules, so `state_dict()` has the keys of the `.pth`
//! export (BatchNorm's `num_batches_tracked` included); `forward(x)` takes a float32
//! N×3×H×W batch, normalised as the network was trained (the mean and standard deviation are in
//! the extra file `cnas.json`), and returns N×classes logits. Only the batch size may vary: the
//! height and width are those traced, as in any traced module. BatchNorm uses its running
//! statistics and drop-path is off (the forward pass is the evaluation one); the auxiliary
//! head's weights are kept as parameters unless asked otherwise, though `forward` never runs it.
use std::ffi::{c_char, c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Network;
use crate::sys;

/// The extra file of the module that describes the network and its input.
pub const EXTRA_FILE: &str = "cnas.json";

/// The batch the forward pass is traced on (any batch size works afterwards).
const TRACE_BATCH: i64 = 2;

/// What the shim's callbacks share: the forward pass, the first error it met, and the
/// serialised module.
struct Forward<'a> {
    network: &'a Network,
    failure: Option<String>,
    bytes: Vec<u8>,
}

/// Called by the shim with the serialised module.
extern "C" fn take_bytes(data: *mut c_void, bytes: *const c_char, len: usize) {
    // SAFETY: as in `run_forward`; `bytes` points to `len` bytes valid for this call.
    let forward = unsafe { &mut *data.cast::<Forward<'_>>() };
    forward.bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) });
}

/// Called by the shim inside the trace: runs the forward pass on the input it hands over.
extern "C" fn run_forward(data: *mut c_void, input: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Forward` that `write` passed for this call, alive and not
    // otherwise borrowed while the shim runs; `input` is a new handle the shim gives us.
    let forward = unsafe { &mut *data.cast::<Forward<'_>>() };
    let Some(input) = (unsafe { sys::take_tensor(input) }) else {
        forward.failure = Some("the tracer gave no input".into());
        return std::ptr::null_mut();
    };
    match catch_unwind(AssertUnwindSafe(|| forward.network.forward_t(&input, false).logits)) {
        Ok(mut logits) => {
            // Handed over to the shim, which frees it.
            let ptr = logits.as_mut_ptr();
            std::mem::forget(logits);
            ptr.cast()
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the forward pass panicked");
            forward.failure = Some(message.lines().next().unwrap_or_default().to_string());
            std::ptr::null_mut()
        }
    }
}

/// Traces `network` (on the CPU, channels-first) on `image_size`² inputs and writes (atomically)
/// the module with the named `tensors` (the network's own variables, which the forward pass reads, plus
/// any extra buffers) to `output`, with `description` as the extra file [`EXTRA_FILE`].
/// `is_buffer` tells buffers (running statistics, counters) from parameters.
pub fn write(
    network: &Network,
    tensors: &[(String, Tensor)],
    is_buffer: impl Fn(&str) -> bool,
    image_size: i64,
    description: &str,
    output: &Path,
) -> Result<()> {
    let names = tensors
        .iter()
        .map(|(n, _)| CString::new(n.as_str()).map_err(|_| Error::Internal(format!("tensor name {n:?}"))))
        .collect::<Result<Vec<_>>>()?;
    let name_ptrs: Vec<_> = names.iter().map(|n| n.as_ptr()).collect();
    let mut handles = sys::pointers(tensors.iter().map(|(_, t)| t));
    let buffers: Vec<c_int> = tensors.iter().map(|(n, _)| c_int::from(is_buffer(n))).collect();
    let input = Tensor::zeros([TRACE_BATCH, 3, image_size, image_size], (Kind::Float, tch::Device::Cpu));
    let extra_name = CString::new(EXTRA_FILE).map_err(|_| Error::Internal("extra file name".into()))?;
    let extra_names = [extra_name.as_ptr()];
    let extra_values = [description.as_ptr().cast()];
    let extra_lens = [description.len()];
    let count = c_int::try_from(tensors.len()).map_err(|_| Error::Internal("too many tensors".into()))?;
    let mut forward = Forward { network, failure: None, bytes: Vec::new() };
    // SAFETY: every pointer refers to data alive for the call (names, tensors, input, extra
    // file, `forward`); the shim borrows them and hands the callback its own tensor handles.
    let status = tch::no_grad(|| unsafe {
        sys::cnas_jit_trace_save(
            name_ptrs.as_ptr(),
            handles.as_mut_ptr(),
            buffers.as_ptr(),
            count,
            sys::tensor_ptr(&input),
            run_forward,
            (&mut forward as *mut Forward<'_>).cast(),
            extra_names.as_ptr(),
            extra_values.as_ptr(),
            extra_lens.as_ptr(),
            1,
            take_bytes,
        )
    });
    if status != 0 {
        let cause = forward.failure.unwrap_or_else(sys::last_error);
        let first = cause.lines().next().unwrap_or("unknown failure").to_string();
        return Err(Error::Internal(format!("tracing the network for TorchScript failed: {first}")));
    }
    crate::util::write_atomic(output, &forward.bytes)
}
