//! `tally`: the collector binary. See `tally --help`.

mod apikey;
mod cli;
mod database;
mod logging;
mod pipeline;
mod replay;
mod run;
mod secrets;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// mimalloc: the pipeline allocates many small short-lived values per record
/// across threads, where it costs a fraction of glibc malloc (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli::load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Validate) = cli.command {
        println!("config OK");
        return match tally_config::taxonomy::validate_report(&config.processors.validate) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(report) => {
                eprintln!("error: {report}");
                ExitCode::from(2)
            }
        };
    }
    logging::init(&config.service);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Verify { tenant }) = &cli.command {
        return match runtime.block_on(verify::run(&config, tenant.as_deref())) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate) => run::migrate(&config).await,
            Some(Command::Apikey(command)) => apikey::run(&config, command).await,
            _ => run::run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
