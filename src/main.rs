use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use camstream::config::{Config, ConfigError};
use camstream::{daemon, logging, plan, probe, profile::Profiles, recording};

#[derive(Parser)]
#[command(
    name = "camstream",
    version,
    about = "Camera streaming daemon: one GStreamer graph for display, recording, RTSP and uplink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML); repeat to layer files, later ones overriding earlier ones.
    #[arg(long, short, default_value = "/etc/camstream/camstream.toml")]
    config: Vec<PathBuf>,
    /// Configuration file layered after the --config files, skipped with a notice when it does
    /// not exist (settings on a data partition that failed to mount); repeatable.
    #[arg(long = "optional-config", value_name = "FILE")]
    optional_config: Vec<PathBuf>,
    /// Override a key, e.g. --set rtsp.port=9554 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the device.
    Run(ConfigArgs),
    /// Check a configuration file and exit.
    CheckConfig(ConfigArgs),
    /// Show cameras, usable H.264 encoders and the display.
    Probe(ConfigArgs),
    /// Print the graph the config would build, in gst-launch syntax.
    Graph(ConfigArgs),
    /// Print a signed viewer token: NAME may watch this device for SECONDS (signal.viewer_secret).
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// Who the token is for (shown in the device's log): letters, digits, '-', '_'.
        #[arg(long)]
        viewer: String,
        /// How long it holds, in seconds.
        #[arg(long, default_value_t = 3600)]
        valid: u64,
    },
    /// List the recordings on the card (start, end, duration, size, path).
    Recordings {
        #[command(flatten)]
        config: ConfigArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// The config files to read: every --config, then each --optional-config that exists.
fn layers(args: &ConfigArgs) -> Vec<PathBuf> {
    let mut files = args.config.clone();
    for f in &args.optional_config {
        if f.exists() {
            files.push(f.clone());
        } else {
            log::warn!("optional config file {} not found: skipped", f.display());
        }
    }
    files
}

fn load(args: &ConfigArgs) -> Result<Config> {
    Config::load_layers(&layers(args), &args.set)
}

fn real_main() -> Result<u8> {
    let cli = Cli::parse();
    logging::init(log::LevelFilter::Info);
    match cli.command {
        Command::Run(args) => {
            let cfg = load(&args)?;
            logging::init(logging::level_filter(cfg.log.level));
            match daemon::run(cfg) {
                Ok(code) => Ok(code as u8),
                // Only a configuration the device cannot run exits 2 (the service manager does
                // not restart it: the same error would come back); anything else exits 1.
                Err(e) if e.is::<ConfigError>() => Err(e),
                Err(e) => {
                    eprintln!("camstream: error: {e:#}");
                    Ok(1)
                }
            }
        }
        Command::CheckConfig(args) => {
            load(&args)?;
            for c in layers(&args) {
                println!("{}: OK", c.display());
            }
            Ok(0)
        }
        Command::Probe(args) => {
            // The probe works without a config file: defaults then.
            let cfg = if args.config.iter().all(|c| c.exists()) {
                load(&args)?
            } else {
                Config::default()
            };
            gst::init().context("cannot initialise GStreamer")?;
            probe::run(&cfg, &Profiles::load(&cfg)?)?;
            Ok(0)
        }
        Command::Graph(args) => {
            let cfg = load(&args)?;
            gst::init().context("cannot initialise GStreamer")?;
            print!("{}", plan::describe_graph(&cfg, &Profiles::load(&cfg)?)?);
            Ok(0)
        }
        Command::Token {
            config,
            viewer,
            valid,
        } => {
            let cfg = load(&config)?;
            let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(valid);
            println!(
                "{}",
                camstream::viewer_token::mint(
                    &cfg.signal.viewer_secret,
                    cfg.device.id.as_str(),
                    &viewer,
                    expires
                )?
            );
            Ok(0)
        }
        Command::Recordings { config, json } => {
            let cfg = load(&config)?;
            let dir = std::path::Path::new(&cfg.recording.dir);
            let entries = recording::list::list(dir, cfg.device.id.as_str())?;
            recording::list::print(&entries, json)?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("camstream: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
