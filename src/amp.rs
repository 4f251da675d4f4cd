//! Mixed precision: bf16 autocast around the forward pass (loss in fp32), through the small
//! C++ shim in `csrc/amp.cpp`. bf16 keeps fp32's exponent range, so no gradient scaling is
//! needed. On the CPU the same path runs (slowly) so tests cover it.
use std::os::raw::c_int;

use tch::Device;

use crate::error::{Error, Result};
use crate::sys;

/// Restores the autocast state when dropped, also on a panic inside the region.
struct Region {
    cuda: c_int,
    previous: c_int,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: plain C calls into libtorch's thread-local autocast state.
        unsafe { sys::cnas_autocast_exit(self.cuda, self.previous) };
    }
}

/// Runs `f` with bf16 autocast on `device` when `enabled` (otherwise runs it as is).
pub fn autocast<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> Result<T> {
    if !enabled {
        return Ok(f());
    }
    let cuda = c_int::from(device.is_cuda());
    // SAFETY: as above.
    let previous = unsafe { sys::cnas_autocast_enter_bf16(cuda) };
    if previous < 0 {
        return Err(Error::Internal("this libtorch refuses bf16 autocast on this device".into()));
    }
    let _region = Region { cuda, previous };
    Ok(f())
}

/// Whether autocast is on for `device` in this thread.
pub fn is_enabled(device: Device) -> bool {
    // SAFETY: as above.
    unsafe { sys::cnas_autocast_enabled(c_int::from(device.is_cuda())) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn matmul_runs_in_bf16_inside_and_fp32_after() {
        let a = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        assert!(!is_enabled(Device::Cpu));
        let inside = autocast(Device::Cpu, true, || {
            assert!(is_enabled(Device::Cpu));
            a.matmul(&a)
        })
        .unwrap();
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert!(!is_enabled(Device::Cpu));
        assert_eq!(a.matmul(&a).kind(), Kind::Float);
        let off = autocast(Device::Cpu, false, || a.matmul(&a)).unwrap();
        assert_eq!(off.kind(), Kind::Float);
    }
}
