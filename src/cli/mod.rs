//! The command line: argument structs and `cnas launch`; `main.rs` parses, logs, maps errors to
//! exit codes and dispatches.
pub(crate) mod args;
pub(crate) mod launch;
