//! crimon: the per-container monitor of crid. See `startup` for how it starts and
//! `event_loop` for what it does while the container runs.

#![deny(unsafe_code)]

mod attach;
mod cli;
mod control;
mod error;
mod event_loop;
mod exec_sync;
mod inspect;
mod log_writer;
mod oom;
mod runtime;
mod shared;
mod startup;
mod sys;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match (cli.command, cli.monitor) {
        (Some(cli::Command::Inspect { socket }), _) => match inspect::inspect(&socket) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("crimon: {}", e.chain());
                1
            }
        },
        (None, Some(args)) => startup::launch(args),
        (None, None) => {
            eprintln!("crimon: nothing to do (see --help)");
            2
        }
    };
    std::process::exit(code);
}
