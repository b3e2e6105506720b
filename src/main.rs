//! `tally`: the collector binary. See `tally --help`.

mod apikey;
mod cli;
mod database;
mod erase;
mod ingest_auth;
mod logging;
mod metrics;
mod pipeline;
mod process_stats;
mod production;
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

/// mimalloc's options, set through its C API (the `mimalloc` crate does not expose it).
mod allocator {
    use std::os::raw::{c_int, c_long};

    extern "C" {
        fn mi_version() -> c_int;
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }

    /// The bundled mimalloc (libmimalloc-sys 0.1.49: v3.3.2) whose option numbers
    /// are below; another version leaves its defaults alone (a test catches it).
    const KNOWN_VERSION: c_int = 30302;
    /// `mi_option_purge_delay`: milliseconds before freed pages are returned to the
    /// OS (v3.3.2's default: 1000, the same for arenas).
    const PURGE_DELAY: c_int = 15;
    /// The purge delay Tally sets, ms.
    const PURGE_DELAY_MS: c_long = 10;
    /// `mi_option_allow_thp`: whether mimalloc asks for transparent huge pages
    /// (default 1).
    const ALLOW_THP: c_int = 43;

    /// The allocator's settings in effect.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Tuning {
        /// The purge delay, ms.
        pub(crate) purge_delay: c_long,
        /// Whether transparent huge pages are off for this process.
        pub(crate) huge_pages_off: bool,
    }

    /// Sets the purge delay to [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` says
    /// otherwise, and reports it with what [`turn_huge_pages_off`] did before `main`.
    ///
    /// With huge pages off, returning freed pages at once (delay 0, the setting
    /// until 2026-12-07) saved only 1.5–3.5 MiB of peak RSS against 10 ms and cost
    /// 9–13% of the collector's CPU at full load in re-faulted pages; mimalloc's own
    /// default (1 s) would keep a burst's memory resident for a second
    /// (docs/performance.md, "Resident set without transparent huge pages").
    ///
    /// `None`: an unknown mimalloc version, left alone.
    pub(crate) fn tune() -> Option<Tuning> {
        // SAFETY: plain calls into the linked mimalloc (options may be set at any
        // time and are read when pages are purged) and a `prctl` that reads a flag
        // of this process.
        unsafe {
            if mi_version() != KNOWN_VERSION {
                return None;
            }
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
            }
            Some(Tuning {
                purge_delay: mi_option_get(PURGE_DELAY),
                huge_pages_off: libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1,
            })
        }
    }

    /// Runs [`turn_huge_pages_off`] from the executable's `.init_array`: before
    /// `main` and before Rust's first allocation, so mimalloc maps its first arena
    /// without asking for huge pages.
    #[used]
    #[link_section = ".init_array"]
    static TURN_HUGE_PAGES_OFF_BEFORE_MAIN: extern "C" fn() = turn_huge_pages_off;

    /// Turns transparent huge pages off for the process unless `MIMALLOC_ALLOW_THP`
    /// is set. mimalloc asks for them on its 1 GiB arena, and where the kernel
    /// grants them on request (`madvise`, Debian's default) every touched 2 MiB
    /// stays resident whole and is purged only whole: at full load that held about
    /// 21 MiB of a 60 MiB peak (docs/performance.md, "Resident set without
    /// transparent huge pages"). Sets mimalloc's option (no advice on what it maps
    /// later) and the process's `PR_SET_THP_DISABLE` (no huge pages at all, also
    /// where advice was given already).
    ///
    /// It runs before `main`, so it allocates nothing and reads the environment
    /// with `getenv`, not through `std::env`.
    extern "C" fn turn_huge_pages_off() {
        // SAFETY: `getenv` with a NUL-terminated literal; the mimalloc calls only
        // read its version and set a static option; `prctl` only sets a flag of
        // this process.
        unsafe {
            if !libc::getenv(c"MIMALLOC_ALLOW_THP".as_ptr()).is_null()
                || mi_version() != KNOWN_VERSION
            {
                return;
            }
            mi_option_set(ALLOW_THP, 0);
            // Fails only on kernels before 3.15, where huge pages stay as the system says.
            let _ = libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_bundled_mimalloc_is_the_known_version_with_huge_pages_off() {
            // SAFETY: as in `tune`.
            let version = unsafe { super::mi_version() };
            assert_eq!(
                version,
                super::KNOWN_VERSION,
                "mimalloc was updated: check the option numbers in src/main.rs"
            );
            let tuning = super::tune().expect("the known mimalloc version is tuned");
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(tuning.purge_delay, super::PURGE_DELAY_MS);
            }
            if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
                assert!(tuning.huge_pages_off, "PR_SET_THP_DISABLE did not take");
                // SAFETY: as in `tune`.
                assert_eq!(unsafe { super::mi_option_get(super::ALLOW_THP) }, 0);
                // Turned off before the first allocation: no page of this test
                // process is huge.
                let rollup = std::fs::read_to_string("/proc/self/smaps_rollup")
                    .expect("Linux has /proc/self/smaps_rollup");
                let huge = rollup
                    .lines()
                    .find_map(|line| line.strip_prefix("AnonHugePages:"))
                    .expect("smaps_rollup lists AnonHugePages");
                assert_eq!(huge.trim(), "0 kB", "huge pages in the heap: {rollup}");
            }
        }
    }
}

fn main() -> ExitCode {
    let allocator = allocator::tune();
    let cli = Cli::parse();
    let config = match cli::load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            return ExitCode::from(2);
        }
    };
    let production = production::enabled(&config, cli.production);
    if production && matches!(cli.command, None | Some(Command::Validate)) {
        let problems = production::problems(&config, config.database_url().as_deref());
        if !problems.is_empty() {
            eprintln!("error: {}", production::refusal(&problems));
            return ExitCode::from(2);
        }
    }
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
    tracing::debug!(?allocator, "mimalloc tuning");
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
    if let Some(Command::Verify {
        tenant,
        checkpoints,
        archive,
    }) = &cli.command
    {
        let verdict = match archive {
            Some(dir) => runtime.block_on(verify::run_archive(&config, dir)),
            None => runtime.block_on(verify::run(
                &config,
                tenant.as_deref(),
                checkpoints.as_deref(),
            )),
        };
        return match verdict {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(err) => {
                eprintln!("error: {}", error_text(&err));
                ExitCode::from(2)
            }
        };
    }
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Migrate) => run::migrate(&config).await,
            Some(Command::Apikey(command)) => apikey::run(&config, command).await,
            Some(Command::Erase {
                tenant,
                user,
                reason,
            }) => erase::run(&config, tenant, user, reason).await,
            _ => run::run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let text = error_text(&err);
            tracing::error!("{text}");
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, `: `-separated, each said once: a cause whose text its
/// parent's message already ends with (error types that print their source, as
/// `cannot listen on …: {source}` does) is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::error_text;

    /// An error that prints its source in its own message, as many do.
    #[derive(Debug)]
    struct Bind {
        source: std::io::Error,
    }

    impl std::fmt::Display for Bind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot listen on 127.0.0.1:1: {}", self.source)
        }
    }

    impl std::error::Error for Bind {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let err = Err::<(), _>(Bind { source: io() })
            .context("cannot start the OTLP receiver")
            .unwrap_err();
        assert_eq!(
            error_text(&err),
            "cannot start the OTLP receiver: cannot listen on 127.0.0.1:1: Address already in use"
        );
        // A cause its parent does not print is kept.
        let err = Err::<(), _>(io()).context("binding").unwrap_err();
        assert_eq!(error_text(&err), "binding: Address already in use");
    }
}
