//! The library's error type. Every variant says whether it is the user's mistake (bad file,
//! bad option, bad genotype: the binary exits with code 2) or a failure inside the engine.
use std::path::PathBuf;

use crate::space::SpaceError;

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
    /// A data-parallel run failed: bad launch variables (the user's), or a peer that died,
    /// never connected or diverged.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
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
            ),
            Error::Torch(_) => false,
            Error::Dist(e) => matches!(e, crate::dist::DistError::BadEnv(_)),
        }
    }

    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io { path: path.into(), error }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
