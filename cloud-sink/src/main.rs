//! `outpost-cloud-sink`: parse arguments, load and validate the config, build,
//! wait for a signal, drain. A config problem exits 78 (EX_CONFIG) before any
//! port is bound.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cloud_sink::config::{Config, ConfigError, LogFormat};
use cloud_sink::{EX_CONFIG, admin};
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-cloud-sink",
    version,
    about = "The Outpost cloud sink: ingest, storage and query API for gateway uplinks."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP(S) API until SIGTERM or SIGINT.
    Serve {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Listen on this address instead of the config's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Check a config file; print every problem and exit 78 if there are any.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Manage gateways and their tokens.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Make an operator token (for training jobs and alert labels): prints
    /// ONLY the token on stdout, and on stderr the line to add to the file
    /// named by `api.operator_tokens_file`.
    OperatorToken {
        /// Operator name: letters, digits, '.', '_', '-'.
        name: String,
    },
    /// Train an anomaly model from files: model.onnx, manifest, report.
    Train(Box<cloud_sink::train::cli::TrainArgs>),
    /// Metrics of a trained model on labelled files.
    Evaluate(cloud_sink::train::cli::EvaluateArgs),
    /// Score every row of a file with a trained model.
    Score(cloud_sink::train::cli::ScoreArgs),
}

#[derive(Debug, Subcommand)]
enum GatewayCommand {
    /// Register a gateway; prints ONLY its new token on stdout (shown once).
    Add {
        /// Gateway name: letters, digits, '.', '_', '-'.
        name: String,
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List gateways with their counters.
    List {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::OperatorToken { name } => report(operator_token(&name)),
        Command::Train(args) => report(cloud_sink::train::cli::train(*args)),
        Command::Evaluate(args) => report(cloud_sink::train::cli::evaluate(args)),
        Command::Score(args) => report(cloud_sink::train::cli::score(args)),
        Command::Serve { config, listen } => {
            let config = match load_config(&config, listen) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(serve(config))
        }
        Command::Gateway {
            command: GatewayCommand::Add { name, config },
        } => {
            let config = match load_config(&config, None) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(gateway_add(&config, &name))
        }
        Command::Gateway {
            command: GatewayCommand::List { config },
        } => {
            let config = match load_config(&config, None) {
                Ok(c) => c,
                Err(code) => return code,
            };
            report(gateway_list(&config))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_exit() -> ExitCode {
    ExitCode::from(EX_CONFIG as u8)
}

fn print_config_error(e: &ConfigError) {
    for line in e.lines() {
        eprintln!("{line}");
    }
}

/// Loads, applies the `--listen` override, validates. Err is the exit code.
fn load_config(path: &Path, listen: Option<SocketAddr>) -> Result<Config, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        print_config_error(&ConfigError::Read {
            path: path.to_owned(),
            source,
        });
        config_exit()
    })?;
    let mut config = Config::from_toml(&text).map_err(|message| {
        print_config_error(&ConfigError::Parse {
            path: path.to_owned(),
            message,
        });
        config_exit()
    })?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    config.check(path).map_err(|e| {
        print_config_error(&e);
        config_exit()
    })?;
    Ok(config)
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            config_exit()
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal; under systemd, journald stamps each line.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal && !journald);
    match (config.log.format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    // The server passes its provider explicitly; installing it process-wide too
    // keeps any other rustls user in this process on the same provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting runtime")?;
    let result = runtime.block_on(async move {
        let sink = cloud_sink::spawn(config)
            .await
            .context("starting the sink")?;
        // Tests parse this exact line to learn the port.
        eprintln!("listening on {}", sink.url());
        wait_for_signal().await?;
        info!("Shutting down.");
        sink.shutdown().await.context("shutting down")?;
        info!("Stopped.");
        Ok(())
    });
    // The sink's shutdown cancelled the training job and waited for it; a
    // job that did not stop in time (one huge fold) is abandoned here. It
    // has registered nothing: a cancelled job never reaches registration.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn operator_token(name: &str) -> anyhow::Result<()> {
    cloud_sink::auth::check_gateway_name(name)
        .map_err(|e| anyhow::anyhow!(e.replace("gateway name", "operator name")))?;
    let token = cloud_sink::auth::generate_token();
    // stdout carries the token alone; people read stderr.
    println!("{token}");
    eprintln!(
        "Add this line to the file named by api.operator_tokens_file and restart the sink; the token above is not stored anywhere:\n{}",
        cloud_sink::auth::OperatorTokens::line(name, &token)
    );
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "Signal received."),
        _ = int.recv() => info!(signal = "SIGINT", "Signal received."),
    }
    Ok(())
}

fn gateway_add(config: &Config, name: &str) -> anyhow::Result<()> {
    let token =
        admin::add_gateway(config, name).with_context(|| format!("adding gateway {name:?}"))?;
    // stdout carries the token alone; people read stderr.
    println!("{token}");
    eprintln!("Gateway {name:?} added. Its token is printed above and is not stored: keep it now.");
    Ok(())
}

fn gateway_list(config: &Config) -> anyhow::Result<()> {
    let gateways = admin::list_gateways(config).context("listing gateways")?;
    println!(
        "{:<32} {:>12} {:>10} {:>12}  last seen",
        "name", "readings", "batches", "duplicates"
    );
    for g in gateways {
        let last_seen = g.last_seen_ns.map_or_else(
            || "never".to_owned(),
            |ns| protocol::Timestamp(ns).to_string(),
        );
        println!(
            "{:<32} {:>12} {:>10} {:>12}  {last_seen}",
            g.name, g.readings_stored, g.batches, g.duplicates
        );
    }
    Ok(())
}
