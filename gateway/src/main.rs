//! `outpost-gateway`: parse arguments, load and validate config, run until
//! SIGTERM/SIGINT, drain. A config error exits with 78 (EX_CONFIG) before any
//! port is bound.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use humantime_serde::re::humantime;
use outpost_gateway::config::{GatewayConfig, LogFormat};
use outpost_gateway::outbox::{Outbox, OutboxError, QuarantineEntry, QuarantineFilter};
use protocol::Timestamp;
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
    /// Check this build on this machine: ingest readings into a temporary
    /// outbox through the real ingest stage and read them back. No network,
    /// no config needed; exit 0 when everything matched.
    SelfTest {
        /// SenML messages (3 readings each) to push through.
        #[arg(long, default_value_t = 200)]
        messages: usize,
    },
    /// Validate a config file; print every problem; exit 78 if any.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Show the analysis models a config installs (loaded and checked as the
    /// daemon would) and, when the daemon runs, its live analysis stats.
    Models {
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/outpost/gateway.toml")]
        config: PathBuf,
    },
    /// Inspect quarantined payloads.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
}

/// Where the quarantine commands find the outbox database.
#[derive(Args)]
struct QuarantineDb {
    /// Config file (TOML); its `storage.path` is the database. The gateway
    /// must not be running: the daemon holds a lock on the database.
    #[arg(short, long, default_value = "/etc/outpost/gateway.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// List the newest quarantined payloads, newest first.
    List {
        #[command(flatten)]
        db: QuarantineDb,
        /// How many entries.
        #[arg(short, long, default_value_t = 20)]
        limit: usize,
        /// Only entries with this reason code (e.g. syntax, too_large).
        #[arg(long, value_name = "CODE")]
        reason: Option<String>,
        /// Print a JSON array instead of one line per entry.
        #[arg(long)]
        json: bool,
    },
    /// Print one entry in full: the kept payload as text if it is UTF-8, else as hex.
    Show {
        #[command(flatten)]
        db: QuarantineDb,
        /// The entry's id (first column of `quarantine list`).
        id: u64,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete every entry, or those matching --reason and --before. Without
    /// --yes nothing is deleted: the entries that would be are listed.
    Purge {
        #[command(flatten)]
        db: QuarantineDb,
        /// Only entries with this reason code.
        #[arg(long, value_name = "CODE")]
        reason: Option<String>,
        /// Only entries received before this instant (RFC 3339, e.g. 2026-01-01T00:00:00Z).
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        before: Option<Timestamp>,
        /// Really delete.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| e.to_string())?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .map(Timestamp)
        .ok_or_else(|| "out of range (1970..2262)".to_owned())
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
        Command::SelfTest { messages } => self_test(messages),
        Command::Models { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            print!("{}", outpost_gateway::analysis::report::summary(&cfg));
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("outpost-gateway: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            print!(
                "{}",
                runtime.block_on(outpost_gateway::analysis::report::live_stats(&cfg))
            );
            ExitCode::SUCCESS
        }
        Command::Quarantine { command } => {
            let config = match &command {
                QuarantineCommand::List { db, .. }
                | QuarantineCommand::Show { db, .. }
                | QuarantineCommand::Purge { db, .. } => db.config.clone(),
            };
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match quarantine(&cfg, command) {
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
            let result = runtime.block_on(outpost_gateway::run_with_reload(
                cfg,
                Some(config),
                shutdown_signal(),
            ));
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

/// `self-test`: prints each step's result; exit 1 on failure.
fn self_test(messages: usize) -> ExitCode {
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
    println!(
        "outpost-gateway {} self-test on {}/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    match runtime.block_on(outpost_gateway::selftest::run(messages)) {
        Ok(report) => {
            println!(
                "ingest: {} messages, {} readings committed to a temporary outbox and read back identical in {:?}",
                report.messages, report.readings, report.elapsed
            );
            println!(
                "analysis: {} windows scored by a tract ONNX model through the worker; tract vs reference within {:.1e} (relative)",
                report.windows_scored, report.max_score_diff
            );
            println!("self-test: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("self-test: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the outbox for a quarantine command: never creates one, and says so
/// plainly when the daemon holds the lock.
fn open_outbox(cfg: &GatewayConfig) -> anyhow::Result<Outbox> {
    let path = &cfg.storage.path;
    if !path.is_dir() {
        bail!(
            "no outbox database at {} (storage.path): nothing to inspect",
            path.display()
        );
    }
    match Outbox::open(path, &cfg.storage) {
        Ok(outbox) => Ok(outbox),
        Err(OutboxError::Locked { .. }) => bail!(
            "the outbox database {} is locked: the gateway seems to be running: stop it first",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening the outbox at {}", path.display())),
    }
}

fn quarantine(cfg: &GatewayConfig, command: QuarantineCommand) -> anyhow::Result<()> {
    let outbox = open_outbox(cfg)?;
    match command {
        QuarantineCommand::List {
            limit,
            reason,
            json,
            ..
        } => {
            let filter = QuarantineFilter {
                reason,
                before: None,
            };
            let entries = outbox.quarantine_matching(&filter, limit)?;
            if json {
                let all: Vec<_> = entries.iter().map(|(id, e)| entry_json(*id, e)).collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for (id, e) in &entries {
                    println!("{}", entry_line(*id, e));
                }
            }
        }
        QuarantineCommand::Show { id, json, .. } => {
            let Some(e) = outbox.quarantine_get(id)? else {
                bail!("no quarantine entry {id}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&entry_json(id, &e))?);
            } else {
                print!("{}", entry_full(id, &e));
            }
        }
        QuarantineCommand::Purge {
            reason,
            before,
            yes,
            ..
        } => {
            let filter = QuarantineFilter { reason, before };
            if yes {
                let n = outbox.quarantine_purge(&filter)?;
                println!(
                    "deleted {n} entries; {} bytes of quarantine left",
                    outbox.quarantine_bytes()
                );
            } else {
                let entries = outbox.quarantine_matching(&filter, usize::MAX)?;
                for (id, e) in &entries {
                    println!("{}", entry_line(*id, e));
                }
                println!(
                    "{} entries would be deleted; run again with --yes to delete them",
                    entries.len()
                );
            }
        }
    }
    Ok(())
}

/// A payload for display: `("utf-8", text)` when it is text, else `("hex", hex)`.
/// A kept prefix cut inside a multi-byte character still counts as text.
fn payload_display(e: &QuarantineEntry) -> (&'static str, String) {
    let p = &e.payload;
    let text = match std::str::from_utf8(p) {
        Ok(t) => Some(t),
        Err(err) if err.error_len().is_none() && p.len() < e.payload_len => {
            std::str::from_utf8(&p[..err.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(t) => ("utf-8", t.to_owned()),
        None => ("hex", p.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// Control characters escaped (a payload must not drive the terminal);
/// with `keep_lines`, newlines and tabs are kept.
fn escape_controls(s: &str, keep_lines: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && !(keep_lines && matches!(c, '\n' | '\t')) {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One line: id, received, origin, reason, detail, length, payload preview.
fn entry_line(id: u64, e: &QuarantineEntry) -> String {
    let preview: String = String::from_utf8_lossy(&e.payload)
        .chars()
        .take(80)
        .collect();
    format!(
        "{id}\t{}\t{}\t{}\t{} ({} bytes): {}",
        e.received,
        escape_controls(&e.origin, false),
        escape_controls(&e.reason, false),
        escape_controls(&e.detail, false),
        e.payload_len,
        escape_controls(&preview, false)
    )
}

fn entry_full(id: u64, e: &QuarantineEntry) -> String {
    let (encoding, payload) = payload_display(e);
    let payload = match encoding {
        "hex" => payload
            .as_bytes()
            .chunks(64)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => escape_controls(&payload, true),
    };
    format!(
        "id:       {id}\nreceived: {}\norigin:   {}\nreason:   {}\ndetail:   {}\n\
         payload:  {} bytes, first {} kept, shown as {encoding}\n{payload}\n",
        e.received,
        escape_controls(&e.origin, false),
        escape_controls(&e.reason, false),
        escape_controls(&e.detail, false),
        e.payload_len,
        e.payload.len(),
    )
}

fn entry_json(id: u64, e: &QuarantineEntry) -> serde_json::Value {
    let (encoding, payload) = payload_display(e);
    serde_json::json!({
        "id": id,
        "received": e.received.to_string(),
        "received_ns": e.received.as_nanos(),
        "origin": e.origin,
        "reason": e.reason,
        "detail": e.detail,
        "payload_len": e.payload_len,
        "payload_kept": e.payload.len(),
        "payload_encoding": encoding,
        "payload": payload,
    })
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
