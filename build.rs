//! Link details for libtorch (see README, "Building"):
//! 1. keep `libtorch_cuda` linked even though no symbol of it is used directly, otherwise the
//!    linker drops it and CUDA is silently unavailable at run time;
//! 2. add an rpath to libtorch's folder so binaries and tests run without LD_LIBRARY_PATH;
//! 3. compile `csrc/`, the few libtorch C++ calls tch does not expose (bf16 autocast,
//!    multi-tensor optimizer steps, c10d collectives, a seeded randperm,
//!    TorchScript tracing with named parameters; they share
//!    `csrc/cnas.h`, and Rust declares them in `src/sys.rs`); the NCCL part only where the
//!    CUDA and NCCL headers of the nvidia-* wheels are found next to libtorch (see README,
//!    "Distributed").
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    // The whole folder: the shims, their shared header cnas.h and gloo-decl.
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
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .file("csrc/amp.cpp")
        .file("csrc/dist.cpp")
        .file("csrc/jit.cpp")
        .file("csrc/optim.cpp")
        .file("csrc/random.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // The wheel has no gloo headers: declarations of the names c10d's Gloo header uses.
        .include("csrc/gloo-decl")
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    if let Some(cuda_includes) = nccl_includes(&root, &lib) {
        build.file("csrc/dist_nccl.cpp").define("CNAS_HAVE_NCCL", None).define("USE_C10D_NCCL", None);
        for dir in cuda_includes {
            build.include(dir);
        }
    }
    build.compile("cnas_csrc");
}

/// The include folders the NCCL backend needs (CUDA runtime, NCCL, and the CUDA compiler and
/// CCCL headers those include), when libtorch_cuda.so and the nvidia-* wheels beside torch
/// provide them. scripts/setup.sh installs the nvidia-cuda-crt and nvidia-cuda-cccl wheels for
/// the last two; otherwise they are looked for in `CNAS_CUDA_INCLUDE` (folders separated by
/// `:`) and `$CUDA_HOME/include`. `CNAS_NO_NCCL=1` leaves NCCL out.
fn nccl_includes(root: &std::path::Path, lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    for var in ["CNAS_NO_NCCL", "CNAS_CUDA_INCLUDE", "CUDA_HOME"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CNAS_NO_NCCL").is_some() || !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = root.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    if !nccl.join("nccl.h").exists() {
        return None;
    }
    let mut candidates: Vec<PathBuf> =
        ["cu13/include", "cuda_runtime/include", "cu12/include"].iter().map(|d| nvidia.join(d)).collect();
    if let Some(extra) = std::env::var_os("CNAS_CUDA_INCLUDE") {
        candidates.extend(std::env::split_paths(&extra));
    }
    let home = std::env::var_os("CUDA_HOME").map(PathBuf::from).unwrap_or_else(|| "/usr/local/cuda".into());
    candidates.push(home.join("include"));
    let mut dirs = vec![nccl];
    for header in ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"] {
        match candidates.iter().find(|d| d.join(header).exists()) {
            Some(d) if !dirs.contains(d) => dirs.push(d.clone()),
            Some(_) => {}
            None => {
                println!(
                    "cargo:warning=NCCL backend left out: no {header} (run scripts/setup.sh, or set CNAS_CUDA_INCLUDE)"
                );
                return None;
            }
        }
    }
    Some(dirs)
}
