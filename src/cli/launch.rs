//! `cnas launch`: torchrun's job without torchrun, one process per local rank.
use std::time::Duration;

use anyhow::Context;

use super::args::LaunchArgs;

/// `cnas launch`: starts the local ranks with torchrun's variables, waits for them, and stops
/// the others as soon as one fails (then fails with its exit code).
pub(crate) fn launch(args: &LaunchArgs) -> anyhow::Result<()> {
    use std::process::{Command as Process, Stdio};
    validate(args)?;
    let exe = std::env::current_exe().context("locating the cnas binary")?;
    let per_node = args.nproc_per_node as usize;
    let world = per_node * args.nnodes as usize;
    // As torchrun: one libtorch thread per process unless said otherwise, so N processes do
    // not fight over the cores with N thread pools each as wide as the machine.
    let one_thread = per_node > 1 && std::env::var_os("OMP_NUM_THREADS").is_none();
    let mut children = Vec::with_capacity(per_node);
    for local in 0..per_node {
        let rank = args.node_rank as usize * per_node + local;
        let mut process = Process::new(&exe);
        if one_thread {
            process.env("OMP_NUM_THREADS", "1");
        }
        let child = process
            .args(&args.command)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", per_node.to_string())
            .env("GROUP_RANK", args.node_rank.to_string())
            .env("MASTER_ADDR", &args.master_addr)
            .env("MASTER_PORT", args.master_port.to_string())
            // Rank 0 hosts the store here: a torchrun variable inherited from the shell would
            // make every rank wait for an agent's store that does not exist.
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push((rank, child));
    }
    let mut failure: Option<(usize, i32)> = None;
    let mut running = children.len();
    while running > 0 {
        running = 0;
        for (rank, child) in &mut children {
            match child.try_wait().context("waiting for a rank")? {
                Some(status) if !status.success() && failure.is_none() => {
                    failure = Some((*rank, status.code().unwrap_or(1)));
                }
                Some(_) => {}
                None => running += 1,
            }
        }
        if failure.is_some() && running > 0 {
            // One rank failed: the others would only wait for it until --dist-timeout.
            for (_, child) in &mut children {
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failure {
        Some((rank, code)) => {
            eprintln!("error: rank {rank} exited with code {code}; stopped the other local ranks");
            std::process::exit(code.clamp(1, 255));
        }
        None => Ok(()),
    }
}

/// The checks clap cannot make alone: they involve two options, or the command.
pub(crate) fn validate(args: &LaunchArgs) -> cnas::error::Result<()> {
    if args.node_rank >= args.nnodes {
        return Err(cnas::Error::BadOption(format!(
            "--node-rank {} does not exist among --nnodes {}",
            args.node_rank, args.nnodes
        )));
    }
    if args.command.first().is_some_and(|c| c == "launch") {
        return Err(cnas::Error::BadOption("cnas launch cannot launch itself".into()));
    }
    Ok(())
}
