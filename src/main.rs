//! The `cnas` command line: a thin layer over the library. It parses, sets up logging, runs the
//! command (`cli::commands`) and maps errors to exit codes: 2 for a user's mistake, 3 for a
//! failure of the environment (full disk, failed download), 1 for anything else.
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

mod cli;
use cli::args::{Cli, Command};
use cli::commands::{self, Global};

fn main() -> ExitCode {
    // Output into a closed pipe (`cnas predict … | head`) ends the process quietly, as it does
    // for Unix tools, instead of a panic in println!.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    commands::report_stdout_failures();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.note_given_options(&matches);
    // Ranks other than 0 of a data-parallel run only warn, unless RUST_LOG says otherwise.
    let quiet_rank = std::env::var("RANK").is_ok_and(|r| r.trim() != "0")
        && std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() != "1");
    let default_level = if quiet_rank { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log redirected to a file stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match std::env::var("RANK") {
                Ok(rank) if std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() != "1") => {
                    eprintln!("error (rank {rank}): {err:#}")
                }
                _ => eprintln!("error: {err:#}"),
            }
            record_for_torchrun(&format!("{err:#}"));
            // 2 the user's mistake, 3 the environment's (retry), 1 cnas's, 128 + N a signal N
            // (README, "Exit codes").
            let code = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<cnas::Error>())
                .map_or(1, cnas::Error::exit_code);
            ExitCode::from(code)
        }
    }
}

/// Under torchrun, the error also goes to the file it names in `TORCHELASTIC_ERROR_FILE` (the
/// JSON of torch.distributed.elastic's `ErrorHandler`), so torchrun's failure summary shows it
/// instead of "traceback: To enable traceback see …".
fn record_for_torchrun(message: &str) {
    let Some(path) = std::env::var_os("TORCHELASTIC_ERROR_FILE").filter(|p| !p.is_empty()) else {
        return;
    };
    let timestamp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let record = serde_json::json!({
        "message": { "message": message, "extraInfo": { "timestamp": timestamp.to_string() } }
    });
    // Best effort: the error is on stderr already.
    let _ = std::fs::write(path, record.to_string());
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let global = Global {
        device: cli.device.resolve()?,
        quiet: cli.quiet,
        dist_timeout: cli.dist_timeout,
        bucket_mb: cli.bucket_mb,
    };
    if matches!(cli.command, Command::Search(_) | Command::Train(_)) {
        // Ctrl-C stops a run at the next step and says how to resume it.
        cnas::run::interrupt::install();
    }
    match cli.command {
        Command::Search(args) => commands::search(&args, &global),
        Command::Train(args) => commands::train(&args, &global),
        Command::Eval(args) => commands::eval(&args, &global),
        Command::Info(args) => commands::info(&args, &global),
        Command::Predict(args) => commands::predict(&args, &global),
        Command::Draw(args) => commands::draw(args),
        Command::Report(args) => commands::report(args, &global),
        Command::Export(args) => commands::export(&args),
        Command::Download(args) => commands::download(args, &global),
        Command::Compare(args) => commands::compare(&args),
        Command::Score(args) => commands::score(&args, &global),
        Command::Launch(args) => cli::launch::launch(&args),
    }
}
