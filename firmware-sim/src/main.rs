//! `outpost-firmware-sim`: parse arguments, run a command, report, exit.
//!
//! Exit codes: 0 success; 1 runtime failure (broker unreachable, I/O);
//! 2 usage error (clap); 78 (EX_CONFIG) invalid arguments.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use outpost_firmware_sim::bench::bench_broker;
use outpost_firmware_sim::cli::{Cli, Command};
use outpost_firmware_sim::dataset::write_dataset;
use outpost_firmware_sim::run::run;

const EX_CONFIG: u8 = 78;

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("serialising JSON")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let (cfg, summary_path) = match args.into_config(std::io::stderr().is_terminal()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("outpost-firmware-sim: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            let outcome = run(cfg).await;
            let mut code = ExitCode::SUCCESS;
            if let Some(summary) = &outcome.summary {
                print!("{}", summary.human());
                if let Some(path) = &summary_path
                    && let Err(e) = write_json(path, summary)
                {
                    eprintln!("outpost-firmware-sim: {e:#}");
                    code = ExitCode::FAILURE;
                }
            }
            if let Some(e) = outcome.error {
                eprintln!("outpost-firmware-sim: {:#}", anyhow::Error::from(e));
                code = ExitCode::FAILURE;
            }
            code
        }
        Command::Dataset(args) => {
            let cfg = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("outpost-firmware-sim: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            match write_dataset(&cfg) {
                Ok(s) => {
                    println!(
                        "wrote {} rows ({} devices from #{}, {} anomalous rows, {} anomalies) to {}",
                        s.rows,
                        cfg.fleet.devices,
                        cfg.fleet.first_device,
                        s.anomalous_rows,
                        s.anomalies,
                        cfg.out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("outpost-firmware-sim: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchBroker(args) => {
            let (cfg, json_path) = match args.into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("outpost-firmware-sim: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            match bench_broker(cfg).await {
                Ok(report) => {
                    print!("{}", report.human());
                    if let Some(path) = &json_path
                        && let Err(e) = write_json(path, &report)
                    {
                        eprintln!("outpost-firmware-sim: {e:#}");
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("outpost-firmware-sim: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
