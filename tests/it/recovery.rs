//! Failure and recovery of runs: one writer per run directory (a second `search`/`train` on
//! the same run exits 2 at once, naming the holder), a run killed with SIGKILL resumes at once
//! and its temporary files are removed, a start that fails writes nothing into the run, and
//! Ctrl-C/SIGTERM stop a run with where it stands and the command that resumes it.
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, cifar10_arg, ok};
use crate::search::TINY;

fn search_cmd(run: &Path, extra: &[&str]) -> Command {
    search_on(&cifar10_arg(), run, extra)
}

fn search_on(data: &str, run: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", "search", "--data", data, "-o"]).arg(run);
    cmd.args(TINY).args(extra);
    cmd
}

fn resume_cmd(what: &str, run: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", what, "--resume"]).arg(run).args(extra);
    cmd
}

/// A small training run: 4 channels, 3 cells, 96 images, `epochs` epochs.
fn train_cmd(run: &Path, epochs: &str, extra: &[&str]) -> Command {
    train_on(&cifar10_arg(), run, epochs, extra)
}

fn train_on(data: &str, run: &Path, epochs: &str, extra: &[&str]) -> Command {
    let mut cmd = common::cnas();
    cmd.args(["--device", "cpu", "--quiet", "train", "--arch", "DARTS_V2", "--data", data, "-o"])
        .arg(run)
        .args(["--init-channels", "4", "--layers", "3", "--batch-size", "32", "--max-images", "96"])
        .args(["--max-eval-images", "64", "--epochs", epochs])
        .args(extra);
    cmd
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start cnas")
}

/// Polls `ready` every 5 ms for at most a minute.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The process id written into the run's lock file, once the lock is taken.
fn lock_holder(run: &Path) -> Option<u32> {
    std::fs::read_to_string(run.join(".cnas.lock")).ok()?.trim().parse().ok()
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: sending a signal to a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exactly one of two processes started together on one run ran it; the other exited 2 at
/// once naming the run and the winner's process id.
fn one_ran_one_refused(run: &Path, a: Child, b: Child) {
    let (ida, idb) = (a.id(), b.id());
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (winner, loser, winner_id) = match (oa.status.code(), ob.status.code()) {
        (Some(0), Some(2)) => (&oa, &ob, ida),
        (Some(2), Some(0)) => (&ob, &oa, idb),
        codes => panic!("want one 0 and one 2, got {codes:?}:\n{}\n{}", stderr(&oa), stderr(&ob)),
    };
    ok(winner);
    let err = stderr(loser);
    assert!(err.contains("is in use") && err.contains(&format!("process {winner_id}")), "{err}");
    assert!(err.contains(&run.display().to_string()), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
}

/// Every metrics line is one JSON object: two writers would have interleaved them.
fn assert_metrics_valid(run: &Path, lines: usize) {
    let metrics = common::read_metrics(run);
    assert_eq!(metrics.len(), lines, "{metrics:?}");
}

#[test]
fn two_searches_on_one_run_directory_one_is_refused_and_a_killed_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Two resumes at once: one finishes the run, the other is refused at once.
    let run = dir.path().join("resumed");
    ok(&search_cmd(&run, &["--stop-after-epochs", "1"]).output().unwrap());
    one_ran_one_refused(&run, spawn(resume_cmd("search", &run, &[])), spawn(resume_cmd("search", &run, &[])));
    // 2 stages × (warm-up, weights, controller, derive)
    assert_metrics_valid(&run, 8);
    assert_eq!(common::entries(&run.join("tb")).len(), 2, "one TensorBoard file per process that wrote");
    ok(&common::cnas_quiet(&["report", run.to_str().unwrap()]));

    // Two forced starts at once on a run directory.
    let forced = |run: &Path| spawn(search_cmd(run, &["--force", "--stop-after-epochs", "1"]));
    one_ran_one_refused(&run, forced(&run), forced(&run));
    assert_metrics_valid(&run, 1);

    // SIGKILL in the middle of a run: the lock goes with the process, so a resume right after
    // it works; the temporary files a kill between a write and its rename leaves are removed.
    let killed = dir.path().join("killed");
    let mut child = spawn(search_cmd(&killed, &[]));
    wait_until("the first checkpoint", || killed.join("checkpoint.safetensors").is_file());
    child.kill().unwrap();
    child.wait().unwrap();
    let leftovers = [".checkpoint.safetensors.tmp4242", ".metrics.jsonl.tmp4242"];
    for name in leftovers {
        std::fs::write(killed.join(name), b"half a file").unwrap();
    }
    ok(&resume_cmd("search", &killed, &[]).output().unwrap());
    for name in leftovers {
        assert!(!killed.join(name).exists(), "{name} left behind");
    }
    assert!(killed.join("genotype.json").is_file());
    assert_metrics_valid(&killed, 8);
}

#[test]
fn two_trainings_on_one_run_directory_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(&train_cmd(&run, "3", &["--stop-after-epochs", "1"]).output().unwrap());
    one_ran_one_refused(&run, spawn(resume_cmd("train", &run, &[])), spawn(resume_cmd("train", &run, &[])));
    assert_metrics_valid(&run, 3);
    assert!(run.join("eval.json").is_file());
}

#[test]
fn a_start_that_fails_writes_nothing_into_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // A CIFAR-10 folder whose first batch file is cut short.
    let empty = dir.path().join("bad-data");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("data_batch_1.bin"), [0u8; 100]).unwrap();
    let bad_data = |mut cmd: Command| {
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    };
    let run = dir.path().join("run");
    let empty = empty.to_str().unwrap();
    bad_data(search_on(empty, &run, &[]));
    bad_data(train_on(empty, &run, "1", &[]));
    let written: Vec<String> = common::entries(&run).into_iter().filter(|n| n != ".cnas.lock").collect();
    assert!(written.is_empty(), "a failed start wrote {written:?}");
    // So the same -o is not "another run" afterwards.
    ok(&train_cmd(&run, "1", &[]).output().unwrap());
    assert_metrics_valid(&run, 1);
}

#[test]
fn ctrl_c_stops_a_search_saying_where_it_stands_and_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = spawn(search_cmd(&run, &["--warmup-epochs", "50"]));
    wait_until("the first checkpoint", || run.join("checkpoint.safetensors").is_file());
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("Ctrl-C again"), "{err}");
    let resume = format!("resume with: cnas search --resume {}", run.display());
    assert!(err.contains("interrupted by SIGINT") && err.contains("stage 1 of 2, warm-up epoch"), "{err}");
    assert!(err.contains(&resume), "{err}");
    ok(&resume_cmd("search", &run, &["--stop-after-epochs", "1"]).output().unwrap());
}

#[test]
fn sigterm_stops_training_and_a_second_signal_ends_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let child = spawn(train_cmd(&run, "200", &[]));
    wait_until("the first checkpoint", || run.join("last.safetensors").is_file());
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    let resume = format!("resume with: cnas train --resume {}", run.display());
    assert!(err.contains("interrupted by SIGTERM") && err.contains(&resume), "{err}");
    assert!(err.contains("training stopped in epoch"), "{err}");

    // Two signals before the first step (the data is still loading): the second one ends the
    // process there and then, without the message of a clean stop.
    let mut again = spawn(resume_cmd("train", &run, &[]));
    wait_until("the lock", || lock_holder(&run) == Some(again.id()));
    signal(&again, libc::SIGINT);
    // Two signals close together can merge into one: the second goes once the first was seen.
    let mut lines = BufReader::new(again.stderr.take().unwrap()).lines();
    let seen = lines.by_ref().map_while(Result::ok).find(|l| l.contains("Ctrl-C again"));
    assert!(seen.is_some(), "no word of the first signal");
    signal(&again, libc::SIGINT);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = again.wait_with_output().unwrap();
    let err = rest.join("\n");
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(!err.contains("resume with"), "the second signal should not wait for a step: {err}");
}
