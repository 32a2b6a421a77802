//! `contrastive-id`: the one binary. Each sub-command lives in its own module under `cmd/`;
//! flags shared by several commands are defined once in `args.rs`.

/// `println!` for a command's output, without its panic on a failed write: see [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for messages and errors, without its panic where standard error cannot be
/// written (`2>/dev/full`): the message is lost, the exit status still says what happened.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod args;
mod cmd;
mod progress;
mod sigbus;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "contrastive-id", version, about = "Contrastive ID pretraining on long vibration signals, with a benchmark suite")]
struct Cli {
    /// The most memory one request sized from outside may take (a declared HDF5 shape, a config
    /// number, a count on the command line): 512M, 8G, … Past it, a run stops with an error
    /// naming the value. Default: CID_MEMORY_BUDGET, else 90 % of the memory available at start.
    #[arg(long, global = true, value_name = "SIZE", value_parser = limits::parse_size)]
    memory_budget: Option<u64>,
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
    /// One saved benchmark run against another: changes, CIs and verdicts; exit 1 on a regression
    /// or a failed category.
    Compare(cmd::compare::Args),
}

/// Set once the reader of standard output has gone away.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes a command's output. A reader that went away (`| head`) only stops the output: the
/// command runs on and ends with its own status (a `bench` that found a regression still exits
/// 1). Any other failure (a full disk behind `> file`) is an error that says so, exit 1. Whatever
/// the command wrote before (checkpoints, reports) is whole: every file is written atomically.
fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            return;
        }
        errln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

fn write_stderr(args: std::fmt::Arguments) {
    use std::io::Write;
    let text = args.to_string();
    let _ = std::io::stderr().lock().write_all(elide_middle(&text, MAX_MESSAGE).as_bytes());
}

/// The most bytes one message prints. Errors echo what a user gave (a table's cell, a config's
/// string, a metric's id), and a value of megabytes would bury the message around it.
const MAX_MESSAGE: usize = 8 << 10;

/// `text` whole where it fits in `max` bytes, else its first two thirds and last third of that,
/// with how much was left out between (cut on character boundaries).
fn elide_middle(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let head = text.floor_char_boundary(max / 3 * 2);
    let tail = text.ceil_char_boundary(text.len() - max / 3);
    format!("{} … [{} bytes left out] … {}", &text[..head], tail - head, &text[tail..]).into()
}

fn main() {
    let cli = Cli::parse();
    sigbus::install();
    // The environment's settings, read once before any work: a bad value is a named error.
    if let Err(e) = limits::init(cli.memory_budget).and_then(|_| engine::cpu::plan::check_env()).and_then(|_| engine::cpu::amx::check_env()).and_then(|_| engine::cpu::fp16_emulation().map(|_| ())) {
        errln!("error: {e}");
        std::process::exit(1);
    }
    if let Some(w) = engine::cpu::amx::env_warning() {
        errln!("warning: {w}");
    }
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Evaluate(a) => cmd::evaluate::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Compare(a) => cmd::compare::run(a),
    };
    if let Err(e) = result {
        // Our error types already name their cause in their message; `{:#}` would repeat it.
        errln!("error: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::elide_middle;

    /// A message past the limit keeps its start and its end (where the error's cause and the
    /// newline are), says how much it left out, and cuts no character in two.
    #[test]
    fn a_long_message_keeps_its_ends_and_says_what_it_left_out() {
        assert_eq!(elide_middle("short\n", 100), "short\n");
        let long = format!("error: Label x{:?} is not an integer\n", "é".repeat(10_000));
        // Both raw cut points (bytes 202 and len − 101) fall inside a two-byte `é`, which must
        // not be split.
        let shown = elide_middle(&long, 303);
        assert!(shown.starts_with("error: Label x\"éé") && shown.ends_with("éé\" is not an integer\n"), "{shown}");
        // What is shown and what is left out add up to the message.
        let (before, rest) = shown.split_once(" … [").unwrap();
        let (count, after) = rest.split_once(" bytes left out] … ").unwrap();
        assert_eq!(before.len() + count.parse::<usize>().unwrap() + after.len(), long.len());
        assert!(before.len() + after.len() <= 303, "{shown}");
    }
}
