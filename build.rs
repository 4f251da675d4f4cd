//! Link details for libtorch (see README, "Building"):
//! 1. keep `libtorch_cuda` linked even though no symbol of it is used directly, otherwise the
//!    linker drops it and CUDA is silently unavailable at run time;
//! 2. add an rpath to libtorch's folder so binaries and tests run without LD_LIBRARY_PATH;
//! 3. compile `csrc/`, the few libtorch C++ calls tch does not expose (bf16 autocast).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
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
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/amp.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("cnas_csrc");
}
