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
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // A caller waits for one JSON line; a command line we cannot parse still gets one.
            let message = e.to_string();
            let first = message.lines().next().unwrap_or("invalid command line");
            println!("{}", serde_json::json!({ "pid": -1, "message": first }));
            eprint!("{message}");
            std::process::exit(2);
        }
    };
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
