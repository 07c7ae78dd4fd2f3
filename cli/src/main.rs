//! The `egresswatch` command line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use egresswatch_plugin_api::BuildOption;

use egresswatch::config::{ConfigError, HostConfig};
use egresswatch::engine::{Engine, EnginePolicy};
use egresswatch::loader::{self, LoadError, Plugin, Transform};
use egresswatch::metrics::BuildInfo;
use egresswatch::run as runner;
use egresswatch::run::Finish;
use egresswatch_tools::generate::GenerateArgs;
use egresswatch_tools::replay::ReplayArgs;

mod fluent_bit_lua;
mod rules_check;

/// Catch command-and-control and data exfiltration in network events while they are still in
/// the pipeline.
#[derive(Debug, Parser)]
#[command(name = "egresswatch", version = version_line(), about, long_about = None)]
struct Cli {
    /// Log format on standard error: `text` for people, `json` (one object per line) for a log
    /// pipeline. The level comes from EGRESSWATCH_LOG (e.g. `debug`, `egresswatch=debug`).
    #[arg(long, global = true, value_enum, env = "EGRESSWATCH_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
}

/// Logs to standard error in `format`, at the level EGRESSWATCH_LOG gives (default: info).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EGRESSWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read NDJSON events on stdin, write them (annotated or routed) on stdout and named outputs.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// The plugin library; overrides `plugin:` in the config.
        #[arg(long, env = "EGRESSWATCH_PLUGIN")]
        plugin: Option<PathBuf>,
    },
    /// Load the configuration, the plugin, the rules and the outputs, report problems, and exit.
    Validate {
        #[command(flatten)]
        config: ConfigArgs,
        /// The plugin library; overrides `plugin:` in the config.
        #[arg(long, env = "EGRESSWATCH_PLUGIN")]
        plugin: Option<PathBuf>,
    },
    /// Work with detection rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Write realistic ECS network traffic with labelled injected attacks to stdout.
    Generate {
        #[command(flatten)]
        args: GenerateArgs,
    },
    /// Replay recorded flow logs (ECS, Zeek, Suricata, Argus; plain or .gz) through the detector
    /// on event time: flagged events, a summary, an HTML report, and quality against labels.
    Replay {
        #[command(flatten)]
        args: ReplayArgs,
    },
    /// Print index mappings for the fields egresswatch adds to flagged events.
    Template {
        #[command(subcommand)]
        target: TemplateCommand,
    },
    /// Print the Lua filter script that runs the detector inside Fluent Bit (its `lua` filter,
    /// through LuaJIT's FFI) for this configuration's `detector:` and `state:` sections.
    FluentBitLua {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// The plugin library the script loads; overrides `plugin:` in the config.
        #[arg(long, env = "EGRESSWATCH_PLUGIN")]
        plugin: Option<PathBuf>,
    },
    /// Print a shell completion script: `egresswatch completions bash > /etc/bash_completion.d/egresswatch`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `egresswatch man > egresswatch.1`.
    Man,
    /// Print the host's version, and the plugin's version and ABI version.
    Version {
        /// The plugin library; default: beside this executable, then ../lib/egresswatch/.
        #[arg(long, env = "EGRESSWATCH_PLUGIN")]
        plugin: Option<PathBuf>,
    },
}

/// Where the configuration comes from.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// A configuration file (YAML, or TOML when it ends in .toml). Repeat it, or give several
    /// separated by commas in EGRESSWATCH_CONFIG, to merge files: mappings merge, any other
    /// value may be set in one file only; relative paths resolve against the first file's
    /// folder.
    #[arg(
        short,
        long,
        env = "EGRESSWATCH_CONFIG",
        value_delimiter = ',',
        required_unless_present = "config_dir"
    )]
    config: Vec<PathBuf>,
    /// A folder whose *.yaml, *.yml and *.toml files are read (in name order) after the
    /// `--config` files; repeatable.
    #[arg(long)]
    config_dir: Vec<PathBuf>,
}

impl ConfigArgs {
    /// The files to read, in order.
    fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files = self.config.clone();
        for dir in &self.config_dir {
            let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::Read {
                path: dir.clone(),
                reason: e,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|e| e == "yaml" || e == "yml" || e == "toml")
                })
                .collect();
            if found.is_empty() {
                return Err(ConfigError::Invalid {
                    path: dir.clone(),
                    problems: vec!["no *.yaml, *.yml or *.toml file in this folder".to_owned()],
                }
                .into());
            }
            found.sort();
            files.extend(found);
        }
        Ok(files)
    }

    /// The files, for messages.
    fn describe(&self) -> String {
        let mut names: Vec<String> = self
            .config
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        names.extend(self.config_dir.iter().map(|p| format!("{}/", p.display())));
        names.join(", ")
    }
}

/// Exit status for a configuration error (EX_CONFIG from sysexits.h, as Vector uses).
const EX_CONFIG: u8 = 78;

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// An Elasticsearch component template (JSON) for every field an alert adds; install it
    /// with `PUT _component_template/egresswatch` and name it in your index template's
    /// `composed_of`.
    Elasticsearch,
}

/// The component template shipped in the repository (`templates/elasticsearch/`).
const ELASTICSEARCH_TEMPLATE: &str = include_str!("../../templates/elasticsearch/egresswatch.json");

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Load rule files and folders and print, per file, the rule, its jobs, its threshold and
    /// whether it would run; exits non-zero when `run` would refuse them (a file that fails,
    /// a duplicate rule_id, nothing that can run).
    Check {
        /// Rule files, or folders searched recursively for *.toml; default: the `rules` of
        /// the configuration.
        #[arg(required_unless_present = "config")]
        paths: Vec<PathBuf>,
        /// A configuration file whose detector settings (user-defined jobs,
        /// fail_on_unsupported, rules) the check uses, as `run` would.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The plugin library; overrides `plugin:` in the config.
        #[arg(long, env = "EGRESSWATCH_PLUGIN")]
        plugin: Option<PathBuf>,
    },
}

/// `egresswatch --version`: the version, the commit and the plugin ABI this host speaks.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{} (commit {}, plugin ABI {})",
            env!("CARGO_PKG_VERSION"),
            env!("EGRESSWATCH_COMMIT"),
            loader::host_abi_version()
        )
    })
}

/// Lets a write to a closed pipe end the process quietly, as it does for other command-line
/// tools (`egresswatch rules check | head -1`). Not for `run`, whose socket outputs must see a
/// closed connection as an error to reconnect from.
fn quiet_broken_pipes() {
    // SAFETY: restoring the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    if !matches!(cli.command, Command::Run { .. }) {
        quiet_broken_pipes();
    }
    let result = match cli.command {
        Command::Run { config, plugin } => run(&config, plugin.as_deref()),
        Command::Validate { config, plugin } => validate(&config, plugin.as_deref()),
        Command::Rules {
            command:
                RulesCommand::Check {
                    paths,
                    config,
                    plugin,
                },
        } => rules_check(&paths, config.as_deref(), plugin.as_deref()),
        Command::Generate { args } => generate(&args),
        Command::Replay { args } => replay(&args),
        Command::Template {
            target: TemplateCommand::Elasticsearch,
        } => {
            print!("{ELASTICSEARCH_TEMPLATE}");
            Ok(())
        }
        Command::FluentBitLua { config, plugin } => fluent_bit_lua(&config, plugin.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "egresswatch",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
        Command::Version { plugin } => version(plugin.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some()) {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `egresswatch fluent-bit-lua`: the script, with absolute paths so that it works from
/// whatever directory Fluent Bit runs in.
fn fluent_bit_lua(config_path: &Path, plugin: Option<&Path>) -> Result<()> {
    let config = HostConfig::load(config_path)?;
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let library = absolute(plugin_path(Some(&config), plugin));
    let config_file = absolute(config_path.to_owned());
    let state = config
        .state
        .as_ref()
        .map(|s| absolute(config.resolve(&s.path)));
    print!(
        "{}",
        fluent_bit_lua::script(&fluent_bit_lua::Settings {
            library: &library,
            config: &config_file,
            state: state.as_deref(),
            save_every_secs: config.state.as_ref().map_or(60, |s| s.interval_secs),
        })
    );
    Ok(())
}

/// The plugin path: the command line, else the config, else beside the executable.
fn plugin_path(config: Option<&HostConfig>, cli: Option<&Path>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_owned();
    }
    match config.and_then(|c| c.plugin.as_ref().map(|p| c.resolve(p))) {
        Some(path) => path,
        None => loader::default_plugin_path(),
    }
}

/// Loads config and plugin and constructs the engine; shared by `run` and `validate`.
fn start(config_args: &ConfigArgs, plugin: Option<&Path>) -> Result<(HostConfig, Plugin, Engine)> {
    let config = HostConfig::load_all(&config_args.files()?)?;
    let plugin = loader::load(&plugin_path(Some(&config), plugin))?;
    let transform = plugin
        .construct(&config.detector_json(), runner::build_options(&config)?)
        .map_err(|e| explain(&config, e))?;
    match transform.warnings().into_result() {
        Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
        Err(e) => tracing::warn!(error = %e, "the plugin's warnings are unavailable"),
    }
    let routes: Vec<String> = transform
        .routes()
        .into_result()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(Into::into)
        .collect();
    let missing = config.missing_routes(&routes);
    if !missing.is_empty() {
        return Err(ConfigError::Invalid {
            path: config.base_dir.clone(),
            problems: missing,
        }
        .into());
    }
    let engine = Engine::new(
        transform,
        EnginePolicy {
            batch: config.batch,
            unreadable: config.unreadable,
            fail_closed: config.fail_closed,
        },
    );
    Ok((config, plugin, engine))
}

/// A plugin's refusal, with its configuration problems pointed at the lines of the file.
fn explain(config: &HostConfig, error: LoadError) -> anyhow::Error {
    match error {
        LoadError::Constructor { problems, .. } if !problems.is_empty() => ConfigError::Invalid {
            path: config
                .sources
                .first()
                .map_or_else(PathBuf::new, |s| s.path.clone()),
            problems: config.detector_problems(&problems),
        }
        .into(),
        other => other.into(),
    }
}

fn run(config_args: &ConfigArgs, plugin: Option<&Path>) -> Result<()> {
    let signals = runner::Signals::install().context("installing signal handlers")?;
    let (config, plugin, mut engine) = start(config_args, plugin)?;
    tracing::info!(
        plugin = plugin.name(),
        version = plugin.version(),
        "plugin loaded"
    );
    // SIGHUP: the files read again, the detector built anew by the plugin already loaded.
    let mut rebuild = || -> Result<(HostConfig, Transform)> {
        let config = HostConfig::load_all(&config_args.files()?)?;
        let transform = plugin
            .construct(&config.detector_json(), runner::build_options(&config)?)
            .map_err(|e| explain(&config, e))?;
        Ok((config, transform))
    };
    let report = runner::run(
        &config,
        build_info(&plugin),
        &mut engine,
        &signals,
        &mut rebuild,
    )?;
    log_summary(&config, &engine, &report);
    Ok(())
}

/// The exit summary: a few lines (events in and out per output, what was unreadable, flagged
/// per rule, learning per job, where the state went), each with its figures as fields.
fn log_summary(config: &HostConfig, engine: &Engine, report: &runner::RunReport) {
    let c = engine.counters();
    let finish = match report.finish {
        Finish::Stopped => "stopped by signal, after flushing everything read",
        Finish::Eof => "input ended; everything read was flushed",
    };
    tracing::info!(
        lines_in = c.lines_in,
        annotated = c.annotated,
        routed = c.routed,
        "egresswatch finished: {finish}"
    );
    for o in &report.outputs {
        tracing::info!(
            output = %o.name,
            events_out = o.delivered,
            dropped = o.dropped,
            reconnects = o.reconnects,
            "output {}: {} events",
            o.name,
            o.delivered
        );
    }
    if c.not_utf8 + c.oversize + c.unreadable > 0 {
        tracing::warn!(
            not_utf8 = c.not_utf8,
            oversize = c.oversize,
            unreadable = c.unreadable,
            "lines the detector could not read were passed on unread"
        );
    }
    if c.plugin_errors + c.rejected_replacements > 0 {
        tracing::warn!(
            plugin_errors = c.plugin_errors,
            rejected_replacements = c.rejected_replacements,
            "batches the plugin failed on / replacement texts rejected"
        );
    }
    if let Ok(metrics) = engine.transform().metrics().into_result() {
        for (rule, flagged) in egresswatch::metrics::flagged_per_rule(&metrics) {
            tracing::info!(rule = %rule, flagged, "rule \"{rule}\": {flagged} flagged");
        }
        for (job, learning) in egresswatch::metrics::jobs_learning(&metrics) {
            let status = if learning {
                "still learning"
            } else {
                "scoring"
            };
            tracing::info!(job_id = %job, learning, "job {job}: {status}");
        }
    }
    match (&config.state, report.state_bytes) {
        (Some(state), Some(bytes)) => {
            let path = config.resolve(&state.path);
            tracing::info!(path = %path.display(), bytes, "state saved to {}", path.display());
        }
        (Some(state), None) => tracing::warn!(
            path = %config.resolve(&state.path).display(),
            "the state was not saved (see the error above)"
        ),
        (None, _) => tracing::info!("no state file configured: what was learned is not kept"),
    }
}

fn validate(config_args: &ConfigArgs, plugin: Option<&Path>) -> Result<()> {
    let (config, plugin, mut engine) = start(config_args, plugin)?;
    println!(
        "{}: OK (plugin {} {}, ABI {})",
        config_args.describe(),
        plugin.name(),
        plugin.version(),
        plugin.abi_version()
    );
    if plugin.is_baseline() {
        println!(
            "note: the plugin was built against an older {} release: it gives no warnings, \
             metrics or score records, and cannot check rules",
            loader::host_abi_version()
        );
    }
    if plugin.is_unstreamed() {
        println!(
            "note: the plugin was built against an older {} release: it saves its state whole, \
             so a save needs memory for the whole state beside the models",
            loader::host_abi_version()
        );
    }
    if let Some(state) = &config.state {
        let warned = engine
            .transform()
            .warnings()
            .into_result()
            .map_or(0, |w| w.len());
        // Offered to this throw-away transform, so the plugin itself judges the state.
        let condition = egresswatch::state::describe(
            &config.resolve(&state.path),
            plugin.name(),
            state.max_bytes,
            |bytes| {
                engine
                    .transform_mut()
                    .load_state(bytes.into())
                    .into_result()
                    .map_err(|e| e.to_string())
            },
        );
        println!("{condition}");
        // What loading it would do to each job (restart a job whose definition changed, ...).
        if let Ok(warnings) = engine.transform().warnings().into_result() {
            warnings.iter().skip(warned).for_each(|w| println!("  {w}"));
        }
    }
    Ok(())
}

/// What runs, for `egresswatch_build_info`.
fn build_info(plugin: &Plugin) -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: env!("EGRESSWATCH_COMMIT").to_owned(),
        plugin: plugin.name().to_owned(),
        plugin_version: plugin.version().to_owned(),
        abi_version: plugin.abi_version().to_owned(),
    }
}

fn version(plugin: Option<&Path>) -> Result<()> {
    println!(
        "egresswatch {} (plugin ABI {})",
        env!("CARGO_PKG_VERSION"),
        loader::host_abi_version()
    );
    let path = plugin_path(None, plugin);
    let plugin = loader::load(&path)?;
    println!(
        "plugin {} {} (ABI {}) at {}",
        plugin.name(),
        plugin.version(),
        plugin.abi_version(),
        path.display()
    );
    Ok(())
}

fn rules_check(paths: &[PathBuf], config: Option<&Path>, plugin: Option<&Path>) -> Result<()> {
    let config = config.map(HostConfig::load).transpose()?;
    let plugin = loader::load(&plugin_path(config.as_ref(), plugin))?;
    let mut options = match &config {
        Some(config) => vec![BuildOption::BaseDir(
            config.base_dir.to_string_lossy().as_ref().into(),
        )],
        None => Vec::new(),
    };
    if !paths.is_empty() {
        options.push(BuildOption::RulePaths(
            paths
                .iter()
                .map(|p| p.to_string_lossy().as_ref().into())
                .collect(),
        ));
    }
    let detector = config
        .as_ref()
        .map_or_else(|| "{}".to_owned(), HostConfig::detector_json);
    let report = plugin.check_rules(&detector, options)?;
    print!("{}", rules_check::table(&report));
    println!("{}", rules_check::summary(&report));
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    if !report.problems.is_empty() {
        bail!(
            "`run` would refuse these rules:\n  - {}",
            report
                .problems
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join("\n  - ")
        );
    }
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None if std::io::stdout().is_terminal() => bail!(
            "standard output is a terminal: write the events to a file with `-o FILE` or \
             redirect them (`> events.ndjson`)"
        ),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut labels = match &args.labels {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let summary = egresswatch_tools::generate::generate(
        args,
        &mut out,
        labels.as_mut().map(|w| w as &mut dyn std::io::Write),
    )?;
    out.flush()?;
    if let Some(labels) = labels.as_mut() {
        labels.flush()?;
    }
    tracing::info!(events = summary.events, attacks = ?summary.attacks, "generated");
    Ok(())
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    egresswatch_tools::replay::replay(args, &mut out)?;
    out.flush()?;
    Ok(())
}
