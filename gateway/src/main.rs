//! `outpost-gateway`: parse arguments, load and validate config, run until
//! SIGTERM/SIGINT, drain. A config error exits with 78 (EX_CONFIG) before any
//! port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outpost_gateway::config::{GatewayConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// sysexits.h EX_CONFIG.
const EX_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "outpost-gateway",
    version,
    about = "Outpost edge gateway: sensors in, durable outbox, batched uplink."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon.
    Run {
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/outpost/gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config file; print every problem; exit 78 if any.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Inspect quarantined payloads.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List the newest quarantined payloads (the gateway must not be running:
    /// the outbox database is locked by the daemon).
    List {
        #[arg(short, long, default_value = "/etc/outpost/gateway.toml")]
        config: PathBuf,
        /// How many entries.
        #[arg(short, long, default_value_t = 20)]
        limit: usize,
    },
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Under systemd, journald stamps each line itself and shows no colours.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal && !journald);
    match (format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

fn load(path: &std::path::Path) -> Result<GatewayConfig, ExitCode> {
    GatewayConfig::load(path).map_err(|e| {
        eprintln!("outpost-gateway: config error: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Quarantine {
            command: QuarantineCommand::List { config, limit },
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match quarantine_list(&cfg, limit) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outpost-gateway: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(cfg.log.format, cfg.log.level.as_deref());
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("outpost-gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(outpost_gateway::run(cfg, shutdown_signal()));
            // Do not wait for blocking tasks stuck on wedged storage.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "Gateway failed to start.");
                    eprintln!("outpost-gateway: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn quarantine_list(cfg: &GatewayConfig, limit: usize) -> anyhow::Result<()> {
    let outbox = outpost_gateway::outbox::Outbox::open(&cfg.storage.path, &cfg.storage)?;
    for (id, e) in outbox.quarantine_list(limit)? {
        println!(
            "{id}\t{}\t{}\t{}\t{} ({} bytes): {}",
            e.received,
            e.origin,
            e.reason,
            e.detail,
            e.payload_len,
            String::from_utf8_lossy(&e.payload)
                .chars()
                .take(80)
                .collect::<String>()
        );
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
