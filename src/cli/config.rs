//! `cnas search --config` and `cnas train --config`: a new run with a recorded run's options.
//!
//! The new run starts from every option the recorded config.json holds; each option given on
//! the command line replaces the recorded one. Which options were given comes from clap
//! ([`given_options`], a `ValueSource::CommandLine` check), so a default never overrides the
//! file. The merge goes through the options' JSON: an argument's id is the name of the option
//! it sets (checked for every argument by the tests below), with the few exceptions in
//! [`RENAMED`]. The run then records its own config.json as any new run does, so the result of
//! the merge is what the new folder shows.
use std::path::Path;

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::args::{SearchArgs, TrainArgs};
use cnas::data::{DataArgs, DataConfig};
use cnas::run::RunKind;

/// Arguments whose option has another name in config.json.
const RENAMED: &[(&str, &str)] =
    [("no_controller_grad_clip", "controller_grad_clip"), ("bias_decay", "no_bias_decay")].as_slice();

/// The ids of the arguments given on the command line (not defaults) in `matches`.
pub(crate) fn given_options(matches: &ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect()
}

/// `recorded` with the keys of the `given` arguments taken from `from_command_line` (both
/// serialised to JSON objects); keys the object does not have are left for the other parts.
fn overlay<T: Serialize + DeserializeOwned>(
    recorded: &T,
    from_command_line: &T,
    given: &[String],
) -> anyhow::Result<T> {
    let mut merged = serde_json::to_value(recorded)?;
    let command_line = serde_json::to_value(from_command_line)?;
    if let (Value::Object(merged), Value::Object(command_line)) = (&mut merged, &command_line) {
        for id in given {
            let key = RENAMED.iter().find(|(arg, _)| arg == id).map_or(id.as_str(), |(_, key)| key);
            if let Some(value) = command_line.get(key) {
                merged.insert(key.to_string(), value.clone());
            }
        }
    }
    Ok(serde_json::from_value(merged)?)
}

/// The data options: the recorded ones with the given arguments' values; the number of
/// workers always comes from this command line (the machine's business).
fn data_args(recorded: &DataConfig, args: &DataArgs, given: &[String]) -> anyhow::Result<DataArgs> {
    let merged = overlay(recorded, &DataConfig::from_args(args), given)?;
    let mut out = DataArgs { workers: args.workers, ..DataArgs::default() };
    merged.apply(&mut out)?;
    Ok(out)
}

/// A search's options and data options from the config at `path` and `args`'s given options.
pub(crate) fn search(
    path: &Path,
    args: &SearchArgs,
) -> anyhow::Result<(cnas::search::SearchOptions, DataArgs)> {
    let recorded: cnas::search::RunConfig = cnas::run::read_recorded_config(path, RunKind::Search)?;
    let given = &args.given;
    let mut options = overlay(&recorded.search, &args.options()?, given)?;
    let data = data_args(&recorded.data, &args.data, given)?;
    // One seed drives the search and its data split.
    options.seed = data.seed;
    Ok((options, data))
}

/// What a training run repeated from the config at `path` needs: the architecture's name and
/// genotype (the recorded ones unless `--arch` is given), its options and data options.
pub(crate) fn train(
    path: &Path,
    args: &TrainArgs,
) -> anyhow::Result<(String, cnas::space::Genotype, cnas::train::TrainOptions, DataArgs)> {
    let recorded: cnas::train::TrainConfig = cnas::run::read_recorded_config(path, RunKind::Train)?;
    let given = &args.given;
    let data = data_args(&recorded.data, &args.data, given)?;
    let mut options = overlay(&recorded.options, &args.options(), given)?;
    options.seed = data.seed;
    let (arch, genotype) = match &args.arch {
        Some(arch) => cnas::space::resolve_arch(arch)?,
        // The recorded genotype, under the absolute name of its file when it came from one (so
        // that `cnas compare` still links the run to its search from any folder).
        None => {
            let arch = recorded.arch_file.map_or(recorded.arch, |f| f.display().to_string());
            (arch, recorded.network.genotype)
        }
    };
    Ok((arch, genotype, options, data))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::cli::args::{Cli, Command};

    /// Arguments that are not options of the run (where it goes, how it starts, the machine's
    /// business; `--arch` is the recorded architecture), so config.json does not keep them.
    const NOT_RECORDED: &[&str] =
        &["out", "resume", "force", "config", "workers", "stop_after_epochs", "preset", "arch"];

    /// The ids of `subcommand`'s arguments.
    fn argument_ids(subcommand: &str) -> Vec<String> {
        let cli = Cli::command();
        let sub = cli.find_subcommand(subcommand).unwrap();
        sub.get_arguments().map(|a| a.get_id().as_str().to_string()).filter(|id| id != "help").collect()
    }

    fn keys(value: Value) -> Vec<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    /// Every argument of `cnas search` and `cnas train` sets a recorded option of the same
    /// name (or a renamed one) or is one the config does not keep: a new argument cannot be
    /// silently ignored by `--config`.
    #[test]
    fn every_argument_maps_to_a_recorded_option() {
        let data = keys(serde_json::to_value(DataConfig::from_args(&DataArgs::default())).unwrap());
        let search = keys(serde_json::to_value(cnas::search::SearchOptions::default()).unwrap());
        let train = keys(
            serde_json::to_value(cnas::train::TrainOptions::paper(cnas::data::DatasetKind::Cifar10)).unwrap(),
        );
        for (command, options) in [("search", &search), ("train", &train)] {
            for id in argument_ids(command) {
                let key = RENAMED.iter().find(|(arg, _)| *arg == id).map_or(id.as_str(), |(_, key)| key);
                assert!(
                    options.iter().any(|k| k == key)
                        || data.iter().any(|k| k == key)
                        || NOT_RECORDED.contains(&id.as_str())
                        || ["global", "device", "quiet", "dist_timeout", "bucket_mb"].contains(&id.as_str()),
                    "cnas {command} --{id} is neither recorded in config.json nor listed as not recorded"
                );
            }
        }
    }

    fn parse_search(argv: &[&str]) -> SearchArgs {
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        cli.note_given_options(&matches);
        match cli.command {
            Command::Search(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_command_line_overrides_only_what_it_gives() {
        let recorded =
            parse_search(&["cnas", "search", "-o", "r", "--preset", "quick", "--lr", "0.2", "--seed", "7"]);
        let mut recorded_options = recorded.options().unwrap();
        recorded_options.controller_grad_clip = Some(3.0);
        let recorded_data = DataConfig::from_args(&recorded.data);

        // Nothing given: exactly the recorded options (the paper preset's defaults do not win).
        let args = parse_search(&["cnas", "search", "-o", "new"]);
        let options = overlay(&recorded_options, &args.options().unwrap(), &args.given).unwrap();
        assert_eq!(options, recorded_options);
        let data = data_args(&recorded_data, &args.data, &args.given).unwrap();
        assert_eq!((data.seed, data.train_portion), (7, recorded.data.train_portion));

        // Given options win, renamed ones included; the rest stays recorded.
        let args = parse_search(&[
            "cnas",
            "search",
            "-o",
            "new",
            "--epochs",
            "3",
            "--no-controller-grad-clip",
            "--seed",
            "9",
            "--train-portion",
            "0.3",
        ]);
        assert!(args.given.contains(&"epochs".to_string()) && !args.given.contains(&"lr".to_string()));
        let options = overlay(&recorded_options, &args.options().unwrap(), &args.given).unwrap();
        assert_eq!((options.epochs, options.lr, options.controller_grad_clip), (3, 0.2, None));
        assert_eq!(options.warmup_epochs, recorded_options.warmup_epochs);
        let data = data_args(&recorded_data, &args.data, &args.given).unwrap();
        assert_eq!((data.seed, data.train_portion), (9, 0.3));
    }
}
