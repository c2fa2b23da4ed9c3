//! The `herald` binary: one entry point for standalone mode, the Kafka-mode
//! services and the operator's tools.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Webhook delivery for banking events"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run standalone mode with example banking webhooks, a demo receiver and
    /// a handful of events, and show what was delivered.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            eprintln!(
                "herald demo: not yet — standalone mode is being built (see docs/architecture.md)"
            );
            ExitCode::from(3)
        }
    }
}
