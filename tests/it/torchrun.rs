//! `cnas train` under the real `torchrun` of the venv (torch 2.11, `--no-python`, Gloo on the
//! CPU): 2 processes on one node; two nodes on this machine (two launchers, `--nnodes 2`); a
//! node stopped mid-epoch (Ctrl-C, then a frozen node), after which the other stops with an
//! error and both resume the run. `dist.rs` tests the same runs with the variables set by hand.
//!
//! torchrun starts each worker in a session of its own, so killing a launcher's process group
//! does not reach its workers: [`Node`] tracks them (pid and start time), and dropping it (also
//! when a test panics) kills the launcher and every worker it was seen with.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{entries, read_metrics, repo, strings};

/// The venv's torchrun. `None`, with a note, when it is missing: scripts/setup.sh installs it,
/// and under CI (`CI` set) a missing one fails the test instead.
fn torchrun() -> Option<PathBuf> {
    let path = repo().join(".venv/bin/torchrun");
    if path.is_file() {
        return Some(path);
    }
    assert!(std::env::var_os("CI").is_none(), "{} is missing (scripts/setup.sh installs it)", path.display());
    eprintln!("note: torchrun test skipped: {} is missing (run scripts/setup.sh)", path.display());
    None
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string()
}

/// `cnas train` of a tiny CNAS network with `--dist-timeout 20s`; `out` is its `-o`, `extra`
/// adds the rest.
fn train_args(out: &str, extra: &[&str]) -> Vec<String> {
    crate::dist::train_args_with_timeout(Path::new(out), "20s", extra)
}

/// torchrun's options for node `node` of `nodes` (one process each) around `MASTER_PORT` `port`.
fn node_args(node: usize, nodes: usize, port: &str) -> Vec<String> {
    let (node, nodes) = (node.to_string(), nodes.to_string());
    strings(&[
        "--nnodes",
        &nodes,
        "--node-rank",
        &node,
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        port,
    ])
}

/// One torchrun launcher, in a process group of its own (what a terminal's Ctrl-C reaches),
/// its stdout and stderr (its workers' included) read line by line on threads.
struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    text: Vec<String>,
    /// The workers it was seen with, (pid, start time), for the kill on drop.
    workers: BTreeSet<(i32, u64)>,
    /// torchrun's `--log-dir` (its workers' error files), which it would otherwise leave in /tmp.
    _logs: tempfile::TempDir,
}

impl Node {
    /// `torchrun LAUNCHER_ARGS --no-python cnas CNAS_ARGS`, one libtorch thread per worker,
    /// logs at info on every rank (for the checksums).
    fn start(torchrun: &Path, launcher_args: &[String], cnas_args: &[String]) -> Node {
        Node::start_with(torchrun, launcher_args, cnas_args, &[])
    }

    /// [`Node::start`] with more variables for torchrun.
    fn start_with(
        torchrun: &Path,
        launcher_args: &[String],
        cnas_args: &[String],
        env: &[(&str, &str)],
    ) -> Node {
        let logs = tempfile::tempdir().unwrap();
        let mut child = Command::new(torchrun)
            .envs(env.iter().copied())
            .arg("--log-dir")
            .arg(logs.path())
            .args(launcher_args)
            .arg("--no-python")
            .arg(env!("CARGO_BIN_EXE_cnas"))
            .args(cnas_args)
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start torchrun");
        let (tx, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Node { child, lines, text: Vec::new(), workers: BTreeSet::new(), _logs: logs }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Notes the launcher's current children (its workers).
    fn scan_workers(&mut self) {
        let me = self.pid();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            if let Some((ppid, started)) = parent_and_start(pid) {
                if ppid == me {
                    self.workers.insert((pid, started));
                }
            }
        }
    }

    /// Takes in the lines that arrived within `wait`.
    fn read(&mut self, wait: Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            self.text.push(line);
            self.text.extend(self.lines.try_iter());
        }
    }

    /// Waits (at most `limit`) until `done` holds, reading lines meanwhile; fails the test with
    /// the output so far otherwise, or when the launcher ends first.
    fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut(&[String]) -> bool) {
        let start = Instant::now();
        while !done(&self.text) {
            self.scan_workers();
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read(Duration::from_secs(1));
                panic!("torchrun ended ({status}) before {what}:\n{}", self.output());
            }
            assert!(start.elapsed() < limit, "no {what} within {limit:?}:\n{}", self.output());
            self.read(Duration::from_millis(100));
        }
    }

    /// Waits (at most `limit`) for the launcher to exit; its status and how long it took.
    fn finish(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "torchrun still running after {limit:?}: it hangs\n{}",
                self.output()
            );
            self.scan_workers();
            self.read(Duration::from_millis(100));
        };
        let took = start.elapsed();
        // The rest of the output: the pipes close once the workers are gone too.
        let end = Instant::now() + Duration::from_secs(10);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.text.push(line),
                Err(_) => break,
            }
        }
        (status, took)
    }

    /// Runs to the end (at most `limit`); fails the test unless the launcher succeeds.
    fn succeed(&mut self, limit: Duration) {
        let (status, _) = self.finish(limit);
        assert!(status.success(), "torchrun failed ({status}):\n{}", self.output());
    }

    fn output(&self) -> String {
        self.text.join("\n")
    }

    /// Sends `signal` to the launcher's process group (the launcher alone: torchrun forwards
    /// it to its workers), as Ctrl-C in its terminal or `kill` does.
    fn signal_launcher(&self, signal: i32) {
        // SAFETY: a signal to the process group this test started.
        unsafe { libc::kill(-self.pid(), signal) };
    }

    /// Sends `signal` to the launcher and its workers (a node that freezes or dies whole).
    fn signal_node(&mut self, signal: i32) {
        self.scan_workers();
        self.signal_launcher(signal);
        self.signal_workers(signal);
    }

    /// Sends `signal` to the workers seen that still run (not to a process that took a freed pid).
    fn signal_workers(&self, signal: i32) {
        for &(pid, started) in &self.workers {
            if parent_and_start(pid).is_some_and(|(_, s)| s == started) {
                // SAFETY: a signal to a worker this test's launcher started.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }
}

/// A process's parent pid and start time (clock ticks after boot), from /proc/PID/stat.
fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid … starttime(22nd) …": comm may hold spaces, so count after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal_node(libc::SIGKILL);
        } else {
            // Its workers may outlive a launcher that was killed.
            self.signal_workers(libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// `rank R epoch E: weights checksum X` lines: (rank, epoch) → checksum.
fn checksums(lines: &[String]) -> Vec<((usize, usize), String)> {
    let mut found: Vec<_> = lines
        .iter()
        .filter_map(|l| {
            let (head, sum) = l.split_once(": weights checksum ")?;
            let mut words = head.rsplit(' ');
            let epoch = words.next()?.parse().ok()?;
            (words.next()? == "epoch").then_some(())?;
            let rank = words.next()?.parse().ok()?;
            Some(((rank, epoch), sum.trim().to_string()))
        })
        .collect();
    found.sort();
    found
}

/// Asserts that ranks 0 and 1 logged the same weights checksum after each of `epochs`.
fn assert_same_weights(lines: &[String], epochs: &[usize]) {
    let all = checksums(lines);
    let of = |rank| {
        all.iter().filter(|((r, _), _)| *r == rank).map(|((_, e), s)| (*e, s.clone())).collect::<Vec<_>>()
    };
    let (r0, r1) = (of(0), of(1));
    assert_eq!(r0.iter().map(|(e, _)| *e).collect::<Vec<_>>(), epochs, "{}", lines.join("\n"));
    assert_eq!(r0, r1, "the ranks' weights differ");
}

/// The epoch of the run's last.safetensors (the `train_state` of its metadata), once it exists.
fn checkpoint_epoch(run: &Path) -> Option<u64> {
    let bytes = std::fs::read(run.join("last.safetensors")).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let state: serde_json::Value =
        serde_json::from_str(meta.metadata().as_ref()?.get("train_state")?).ok()?;
    state["epoch"].as_u64()
}

/// Asserts that a launcher stopped by a lost peer failed in time and said why: its rank's
/// error line names the collective, and torchrun's summary carries it (cnas wrote it to
/// `TORCHELASTIC_ERROR_FILE`).
fn assert_stopped_by_lost_peer(node: &mut Node, rank: usize, limit: Duration) -> Duration {
    let (status, took) = node.finish(limit);
    assert!(!status.success(), "torchrun succeeded without its peer:\n{}", node.output());
    let prefix = format!("error (rank {rank}): rank {rank}: ");
    let error = node.text.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| {
        panic!("no error line of rank {rank}:\n{}", node.output());
    });
    assert!(error.contains("failed (another rank died"), "{error}");
    let summary = node.text.iter().find(|l| l.trim_start().starts_with("traceback :")).unwrap_or_else(|| {
        panic!("no torchrun summary:\n{}", node.output());
    });
    assert!(summary.contains(&error[prefix.len()..prefix.len() + 20]), "{summary} does not carry {error}");
    took
}

/// The lines that say where each rank sits and who hosts the store (`… joining …`).
fn joining(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(": joining on Cpu with Gloo")).collect()
}

#[test]
fn torchrun_starts_two_ranks_on_one_node() {
    let Some(torchrun) = torchrun() else { return };
    // `--standalone` (torchrun's own rendezvous on a free port): its agent shares its store,
    // unless TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, when rank 0 hosts one as without torchrun.
    for (shared, env) in [(true, vec![]), (false, vec![("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")])] {
        let dir = tempfile::tempdir().unwrap();
        // torchrun replaces `${local_rank}` in the workers' arguments: each rank gets its own
        // -o, so whether `run-1` exists tells whether rank 1 wrote anything at all.
        let out = dir.path().join("run-${local_rank}");
        let extra = ["--epochs", "2", "--batch-size", "16", "--max-images", "64"];
        let launcher = strings(&["--standalone", "--nproc-per-node", "2"]);
        let mut node =
            Node::start_with(&torchrun, &launcher, &train_args(out.to_str().unwrap(), &extra), &env);
        node.succeed(Duration::from_secs(150));
        let text = &node.text;
        let joins = joining(text);
        assert_eq!(joins.len(), 2, "{}", node.output());
        for rank in 0..2 {
            let place = format!("rank {rank} of 2 (node 0, local rank {rank} of 2), store ");
            let join =
                joins.iter().find(|l| l.contains(&place)).unwrap_or_else(|| panic!("rank {rank}: {joins:?}"));
            let host = match (shared, rank) {
                (true, _) => "hosted by torchrun's agent, run ",
                (false, 0) => "hosted here",
                (false, _) => "hosted by rank 0",
            };
            assert!(join.contains(host), "{join}");
        }
        // With the agent's store, rank 0 does not even try to host one.
        assert!(!text.iter().any(|l| l.contains("failed to bind")), "{}", node.output());
        assert_same_weights(text, &[1, 2]);
        let run = dir.path().join("run-0");
        assert_eq!(read_metrics(&run).len(), 2);
        assert_eq!(checkpoint_epoch(&run), Some(2));
        assert!(run.join("eval.json").is_file());
        // Rank 1 created nothing: its -o does not exist.
        assert_eq!(entries(dir.path()), vec!["run-0"]);
    }
}

#[test]
fn torchrun_runs_two_nodes_on_this_machine() {
    let Some(torchrun) = torchrun() else { return };
    let dir = tempfile::tempdir().unwrap();
    // As two machines without a shared disk (a new run needs none): each node its own -o; only
    // node 0's may appear.
    let port = free_port();
    let extra = ["--epochs", "2", "--batch-size", "16", "--max-images", "64"];
    let mut nodes: Vec<Node> = (0..2)
        .map(|n| {
            let out = dir.path().join(format!("node{n}")).join("run");
            Node::start(&torchrun, &node_args(n, 2, &port), &train_args(out.to_str().unwrap(), &extra))
        })
        .collect();
    for node in &mut nodes {
        node.succeed(Duration::from_secs(150));
    }
    for (n, node) in nodes.iter().enumerate() {
        let joins = joining(&node.text);
        assert_eq!(joins.len(), 1, "{}", node.output());
        let place = format!(
            "rank {n} of 2 (node {n}, local rank 0 of 1), store 127.0.0.1:{port} hosted by torchrun's agent"
        );
        assert!(joins[0].contains(&place), "{}", joins[0]);
    }
    let both: Vec<String> = nodes.iter().flat_map(|n| n.text.clone()).collect();
    assert_same_weights(&both, &[1, 2]);
    let run = dir.path().join("node0/run");
    assert_eq!(read_metrics(&run).len(), 2);
    assert_eq!(checkpoint_epoch(&run), Some(2));
    assert_eq!(entries(dir.path()), vec!["node0"], "node 1 (rank 1) wrote something");
}

#[test]
fn a_node_lost_mid_epoch_stops_the_other_and_both_resume() {
    let Some(torchrun) = torchrun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let run_arg = run.to_str().unwrap();
    // Epochs of 64 steps of 16 images (several seconds each in a debug build), so a node
    // stopped just after a checkpoint is stopped well inside the next epoch.
    let new = train_args(run_arg, &["--epochs", "3", "--batch-size", "16", "--max-images", "1024"]);
    let resume = strings(&[
        "--quiet",
        "--device",
        "cpu",
        "--dist-timeout",
        "20s",
        "train",
        "--resume",
        run_arg,
        "--workers",
        "1",
    ]);
    let start = |args: &[String]| -> Vec<Node> {
        let port = free_port();
        (0..2).map(|n| Node::start(&torchrun, &node_args(n, 2, &port), args)).collect()
    };
    // Waits on node 0 until rank 0 has checkpointed `epoch`: the next one has just begun.
    let wait_for_checkpoint = |nodes: &mut Vec<Node>, epoch: u64| {
        let run = run.clone();
        nodes[0].wait_until(&format!("checkpoint of epoch {epoch}"), Duration::from_secs(150), |_| {
            checkpoint_epoch(&run) == Some(epoch)
        });
    };
    let margin = Duration::from_secs(15);

    // 1. Ctrl-C in node 1's terminal during epoch 2: its rank stops at the next step, and rank 0
    // on node 0 fails in its next collective (the connection closes), not after a timeout.
    let mut nodes = start(&new);
    wait_for_checkpoint(&mut nodes, 1);
    nodes[1].signal_launcher(libc::SIGINT);
    let took = assert_stopped_by_lost_peer(&mut nodes[0], 0, Duration::from_secs(20) + margin);
    let (status, _) = nodes[1].finish(margin);
    assert!(!status.success());
    let told = nodes[1].text.iter().find(|l| l.starts_with("error (rank 1): interrupted by SIGINT"));
    let told = told.unwrap_or_else(|| panic!("{}", nodes[1].output()));
    assert!(told.contains(&format!("resume with: cnas train --resume {run_arg}")), "{told}");
    assert_eq!(read_metrics(&run).len(), 1, "the interruption missed epoch 2");
    eprintln!("node 0 stopped {took:?} after Ctrl-C on node 1");

    // 2. Both resume; node 0 (the store's host) freezes during epoch 3, as a machine that
    // hangs or drops off the network: nothing closes, so rank 1 fails after --dist-timeout.
    nodes = start(&resume);
    wait_for_checkpoint(&mut nodes, 2);
    nodes[0].signal_node(libc::SIGSTOP);
    let took = assert_stopped_by_lost_peer(&mut nodes[1], 1, Duration::from_secs(20) + margin);
    assert!(
        took >= Duration::from_secs(15),
        "rank 1 gave up on a frozen peer after {took:?}, before --dist-timeout"
    );
    // The frozen node is gone for good.
    nodes[0].signal_node(libc::SIGKILL);
    let _ = nodes[0].finish(margin);
    assert_eq!(read_metrics(&run).len(), 2, "the freeze missed epoch 3");
    eprintln!("node 1 stopped {took:?} after node 0 froze");

    // 3. Both resume again (the same command) and finish the run.
    nodes = start(&resume);
    for node in &mut nodes {
        node.succeed(Duration::from_secs(150));
    }
    assert!(nodes[0].text.iter().any(|l| l.contains("resuming after epoch 2 of 3")), "{}", nodes[0].output());
    let both: Vec<String> = nodes.iter().flat_map(|n| n.text.clone()).collect();
    assert_same_weights(&both, &[3]);
    let epochs: Vec<u64> = read_metrics(&run).iter().map(|m| m["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    assert!(run.join("eval.json").is_file());
}
