//! The library's error type. Every error says which exit code the binary gives it
//! ([`Error::exit_code`]): 2 when the command or its inputs must change (bad file, bad option,
//! bad genotype, a path that cannot be read or written, read-only places included), 3 when
//! the environment failed and a retry or freed resources may fix it (a full disk or quota, a
//! failed download), 1 for a failure inside cnas or the engine (out of memory included).
//! The module depends on no other of cnas's: the error types of the genotype space and of
//! distributed runs live here and are re-exported where they belong.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// A file the user named cannot be used as asked (missing, truncated, wrong layout).
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    /// Weights that do not fit the network they are loaded into.
    #[error("{0}")]
    WeightMismatch(String),
    /// An option or combination of options that cannot work.
    #[error("{0}")]
    BadOption(String),
    /// (`error` is not named `source` on purpose: the message already includes it, and a
    /// source would be printed a second time by the binary's error chain.)
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A failure inside cnas (not the user's doing): a record that cannot be encoded, a worker
    /// thread that stopped, a state that should not happen. Exit code 1.
    #[error("internal error: {0}")]
    Internal(String),
    /// Not enough memory for what was asked (a network too large for the device). Exit code 1.
    #[error("{0}")]
    OutOfMemory(String),
    /// Fetching `url` failed: no connection, an HTTP error status, a body cut short, or a file
    /// whose checksum is not the published one. Exit code 3: running again may succeed.
    #[error("{url}: {message}")]
    Download { url: String, message: String },
    /// A data-parallel run failed: bad launch variables (the user's), or a peer that died,
    /// never connected or diverged.
    #[error(transparent)]
    Dist(#[from] DistError),
    /// The user stopped a run with a signal (Ctrl-C, SIGTERM); `message` says where the run
    /// stands and how to resume it. The binary exits with 128 + the signal's number.
    #[error("interrupted by {}: {message}", signal_name(*signal))]
    Interrupted { signal: i32, message: String },
}

impl Error {
    /// True when the error comes from what the user gave us rather than from a fault in cnas
    /// or the engine; the binary maps it to exit code 2.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Space(_) | Error::BadFile { .. } | Error::WeightMismatch(_) | Error::BadOption(_) => true,
            Error::Io { error, .. } => matches!(
                error.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::AlreadyExists
                    | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            Error::Torch(_)
            | Error::Internal(_)
            | Error::OutOfMemory(_)
            | Error::Download { .. }
            | Error::Interrupted { .. } => false,
            Error::Dist(e) => matches!(e, DistError::BadEnv(_)),
        }
    }

    /// True when the environment failed rather than the user or cnas, and running again (once
    /// space is freed, or the network answers) may succeed: a full disk or quota, a failed
    /// download.
    pub fn is_environment_failure(&self) -> bool {
        match self {
            Error::Download { .. } => true,
            Error::Io { error, .. } => {
                matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }

    /// The binary's exit code for this error: 2 the user's mistake ([`Error::is_user_error`]),
    /// 3 the environment's ([`Error::is_environment_failure`]), 128 + N a run stopped by signal N
    /// ([`Error::Interrupted`]), 1 anything else.
    pub fn exit_code(&self) -> u8 {
        if let Error::Interrupted { signal, .. } = self {
            // As a shell reports a process that a signal ended.
            return (128 + signal).clamp(0, 255) as u8;
        }
        if self.is_environment_failure() {
            3
        } else if self.is_user_error() {
            2
        } else {
            1
        }
    }

    pub fn download(url: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Download { url: url.into(), message: message.into() }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }
}

/// The usual name of a signal, for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGINT => "SIGINT (Ctrl-C)".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        other => format!("signal {other}"),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can be wrong with a genotype or its description. Every message is one line
/// that names the defect (and, for a cell, the cell and edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// A structural defect found by [`crate::space::Genotype::validate`] / [`crate::space::Cell::validate`], or a genotype
    /// that cannot be written in the form asked for.
    #[error("{0}")]
    Invalid(String),
    /// An operation name that is not one of [`crate::space::Primitive::ALL`].
    #[error("unknown operation '{name}' (valid: {valid})")]
    UnknownPrimitive { name: String, valid: String },
    /// JSON that does not parse, or does not describe a genotype.
    #[error("invalid genotype JSON: {0}")]
    Json(String),
    /// DARTS `Genotype(...)` text that does not parse or does not describe a genotype.
    #[error("invalid DARTS genotype text: {0}")]
    DartsText(String),
}

/// Failures of a distributed run.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launch variables are missing or contradictory (the user's mistake).
    #[error("distributed launch: {0}")]
    BadEnv(String),
    /// Joining the group failed: the rendezvous or a peer did not answer in time.
    #[error(
        "rank {rank} of {world_size} could not join the group at {addr}:{port} within {timeout_s} s: {message}"
    )]
    Connect { rank: usize, world_size: usize, addr: String, port: u16, timeout_s: u64, message: String },
    /// A collective failed: usually another rank died or stopped answering.
    #[error("rank {rank}: {op} failed (another rank died, stopped answering for {timeout_s} s, or diverged): {message}")]
    Collective { rank: usize, op: &'static str, timeout_s: u64, message: String },
    /// The ranks hold different states where they must hold the same.
    #[error("ranks diverged: {0}")]
    Diverged(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    fn io(kind: ErrorKind) -> Error {
        Error::io("/some/where", IoError::new(kind, "x"))
    }

    fn os(code: i32) -> Error {
        Error::io("/some/where", IoError::from_raw_os_error(code))
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        // 2: the command or its inputs must change, read-only output places included.
        for kind in [ErrorKind::NotFound, ErrorKind::PermissionDenied, ErrorKind::ReadOnlyFilesystem] {
            assert_eq!(io(kind).exit_code(), 2, "{kind:?}");
        }
        assert_eq!(Error::BadOption("x".into()).exit_code(), 2);
        // 3: the environment failed; running again may succeed.
        for kind in [ErrorKind::StorageFull, ErrorKind::QuotaExceeded] {
            assert_eq!(io(kind).exit_code(), 3, "{kind:?}");
        }
        assert_eq!(os(libc::ENOSPC).exit_code(), 3);
        assert_eq!(os(libc::EROFS).exit_code(), 2);
        assert_eq!(Error::download("http://h/f", "HTTP 500").exit_code(), 3);
        // 1: cnas or the engine.
        assert_eq!(Error::OutOfMemory("x".into()).exit_code(), 1);
        assert_eq!(Error::Internal("x".into()).exit_code(), 1);
    }
}
