//! Link details for libtorch (see README, "Building"):
//! 1. keep `libtorch_cuda` linked even though no symbol of it is used directly, otherwise the
//!    linker drops it and CUDA is silently unavailable at run time;
//! 2. add an rpath to libtorch's folder so binaries and tests run without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        // torch-sys reports the missing engine itself, with its own instructions.
        return;
    };
    let root = PathBuf::from(libtorch);
    let root = root.canonicalize().unwrap_or(root);
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
