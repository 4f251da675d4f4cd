//! Ctrl-C and SIGTERM during a search or a training run. The first signal asks the run to stop
//! at the next step, where it says how far it got and how to resume (the epoch in progress is
//! redone from the last checkpoint); a second signal ends the process at once. Without
//! [`install`] (the library's default, and every other command) signals keep their default
//! action.
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    if RECEIVED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    let note = b"\ncnas: stopping after the current step (press Ctrl-C again to stop at once)\n";
    // SAFETY: write(2) is async-signal-safe; the buffer is a static byte string.
    unsafe {
        libc::write(2, note.as_ptr().cast(), note.len());
    }
}

/// Routes SIGINT and SIGTERM to the stop-at-the-next-step handler for the rest of the process.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and calls async-signal-safe functions;
        // sigaction is given a fully initialised struct.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal that asked the run to stop, if one did.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// `Err(Error::Interrupted)` once a stop was asked for: called between steps (an atomic load,
/// no host sync). The run that catches it fills in where it stands.
pub fn check() -> Result<()> {
    match received() {
        None => Ok(()),
        Some(signal) => Err(Error::Interrupted { signal, message: String::new() }),
    }
}

/// Gives an interruption its message: where the run stands and the command that resumes it.
pub fn explain(error: Error, message: impl FnOnce() -> String) -> Error {
    match error {
        Error::Interrupted { signal, .. } => Error::Interrupted { signal, message: message() },
        other => other,
    }
}
