//! The command line: argument structs, one function per command, and `cnas launch`; `main.rs` parses, logs, maps errors to
//! exit codes and dispatches.
pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod config;
pub(crate) mod launch;
