//! `contrastive-id`: the one binary. Each sub-command lives in its own module under `cmd/`;
//! flags shared by several commands are defined once in `args.rs`.

mod args;
mod cmd;
mod progress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "contrastive-id", version, about = "Contrastive ID pretraining on long vibration signals, with a benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a signal store and its metadata table.
    Inspect(cmd::inspect::Args),
    /// Write a synthetic signal store + metadata CSV.
    Generate(cmd::generate::Args),
    /// ContrastiveID pretraining from a YAML config.
    Train(cmd::train::Args),
    /// Linear probe and k-NN on frozen embeddings of a checkpoint.
    Evaluate(cmd::evaluate::Args),
    /// The benchmark suite: training, data, model, scalability, hardware, quality.
    Bench(cmd::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Bench(a) => cmd::bench::run(a),
    };
    if let Err(e) = result {
        // Our error types already name their cause in their message; `{:#}` would repeat it.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
