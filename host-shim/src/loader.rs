//! Loading the detector plugin: finding the file, checking that it is a plugin built against a
//! compatible ABI, and constructing its transform. Every failure becomes a [`LoadError`] whose
//! message tells an operator what is wrong and what to do about it.
//!
//! # Older plugins
//! abi_stable's layout check accepts a library whose prefix types have *more* fields than the
//! host's, never fewer (abi_stable issue #118): a host that declares an optional field would
//! refuse every plugin built before that field existed. So the loader checks the root module
//! against the full layout first and, when that fails, against each older layout of this ABI
//! version, newest first: [`egresswatch_plugin_api::unstreamed`] (everything but the streamed
//! state save) and [`egresswatch_plugin_api::baseline`] (the prefix fields only). A plugin is
//! loaded in the first layout it passes, and the host works without what it lacks
//! ([`Transform`] answers for it: its state saved whole; for a baseline plugin also no warnings,
//! no metrics, no score records, no rule check).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use egresswatch_plugin_api::{
    baseline, unstreamed, BuildOption, BuildOption_NE, ConfigProblem, ErrorKind, Metric,
    PluginError, PluginModRef, RulesReport, ScoreRecord, TransformBox, Verdict, WriteSink,
    ABI_VERSION,
};
use thiserror::Error;

/// Base name of the plugin library, without the platform's prefix and suffix.
pub(crate) const PLUGIN_BASE_NAME: &str = "egresswatch_plugin";

/// Why a streamed state save failed.
#[derive(Debug, Error)]
pub(crate) enum SaveError {
    /// Writing the bytes failed (the file: a full disk, an I/O error).
    #[error("{0}")]
    Write(io::Error),
    /// The plugin could not produce them.
    #[error("{0}")]
    Plugin(PluginError),
}

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// No file at the path.
    #[error("plugin not found: {path} (build it with `cargo build --release`, or set `--plugin`, EGRESSWATCH_PLUGIN or `plugin:` in the config)")]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The file exists but the dynamic loader refused it.
    #[error("cannot load plugin {path}: not a loadable shared library ({reason})")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The dynamic loader's message.
        reason: String,
    },
    /// A shared library without our root module.
    #[error("{path} is a shared library but not an egresswatch plugin: it exports no abi_stable root module")]
    NoRootModule {
        /// The file.
        path: PathBuf,
    },
    /// Built against another version of `egresswatch-plugin-api`.
    #[error("plugin {path} was built against plugin ABI {found}, but this egresswatch speaks ABI {expected}: rebuild the plugin against egresswatch-plugin-api {expected}")]
    IncompatibleVersion {
        /// The file.
        path: PathBuf,
        /// The host's ABI version.
        expected: String,
        /// The plugin's ABI version.
        found: String,
    },
    /// Same version, different layout of the shared types.
    #[error("plugin {path} has an ABI layout that differs from this egresswatch's: rebuild both from the same source\n{detail}")]
    IncompatibleLayout {
        /// The file.
        path: PathBuf,
        /// abi_stable's description of the difference.
        detail: String,
    },
    /// The plugin's root-module function panicked.
    #[error("plugin {path} panicked while initialising its root module")]
    RootModulePanicked {
        /// The file.
        path: PathBuf,
    },
    /// Any other loading failure abi_stable reports.
    #[error("cannot load plugin {path}: {detail}")]
    Other {
        /// The file.
        path: PathBuf,
        /// abi_stable's message.
        detail: String,
    },
    /// The plugin loaded but refused the configuration (or panicked building its transform).
    #[error("plugin {name} {version} could not start: {message}")]
    Constructor {
        /// The plugin's name.
        name: String,
        /// The plugin's version.
        version: String,
        /// The plugin's error message.
        message: String,
        /// Configuration problems by key path, when that is why.
        problems: Vec<ConfigProblem>,
    },
    /// The plugin lacks an optional entry point (it was built against an older 0.2 ABI).
    #[error("plugin {name} {version} cannot {what}: it was built against an older plugin ABI without it; rebuild it against egresswatch-plugin-api {ABI_VERSION}")]
    Unsupported {
        /// The plugin's name.
        name: String,
        /// The plugin's version.
        version: String,
        /// What was asked.
        what: &'static str,
    },
}

/// A loaded plugin: its root module and what the loader learned about it.
#[derive(Clone, Copy)]
pub struct Plugin {
    module: Module,
    abi_version: &'static str,
}

/// The root module, in the layout it passed the check with.
#[derive(Clone, Copy)]
enum Module {
    /// Every field this host knows.
    Full(PluginModRef),
    /// A build from before the streamed state save.
    Unstreamed(unstreamed::PluginModRef),
    /// An older build: the prefix fields only.
    Baseline(baseline::PluginModRef),
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        match self.module {
            Module::Full(m) => (m.name())().as_str(),
            Module::Unstreamed(m) => (m.name())().as_str(),
            Module::Baseline(m) => (m.name())().as_str(),
        }
    }

    /// The plugin's own version.
    pub fn version(&self) -> &'static str {
        match self.module {
            Module::Full(m) => (m.version())().as_str(),
            Module::Unstreamed(m) => (m.version())().as_str(),
            Module::Baseline(m) => (m.version())().as_str(),
        }
    }

    /// Whether the plugin has only the baseline layout (an older build of this ABI version).
    pub fn is_baseline(&self) -> bool {
        matches!(self.module, Module::Baseline(_))
    }

    /// Whether the plugin was built before the streamed state save (it has everything else).
    pub fn is_unstreamed(&self) -> bool {
        matches!(self.module, Module::Unstreamed(_))
    }

    /// The version of `egresswatch-plugin-api` the plugin was built against.
    pub fn abi_version(&self) -> &'static str {
        self.abi_version
    }

    /// Asks the plugin to load the rules its configuration (JSON text) names, or those of a
    /// [`BuildOption::RulePaths`] option, and report on each with its verdict.
    pub fn check_rules(
        &self,
        config_json: &str,
        options: Vec<BuildOption>,
    ) -> Result<RulesReport, LoadError> {
        let full = match self.module {
            Module::Full(m) => m.check_rules(),
            Module::Unstreamed(m) => m.check_rules(),
            Module::Baseline(_) => None,
        };
        let check = full.ok_or_else(|| LoadError::Unsupported {
            name: self.name().to_owned(),
            version: self.version().to_owned(),
            what: "check rules",
        })?;
        let options: Vec<BuildOption_NE> = options.into_iter().map(BuildOption::wrap).collect();
        check(config_json.into(), options.as_slice().into())
            .into_result()
            .map_err(|e| self.refused(e))
    }

    /// Constructs the plugin's transform from the detector configuration (JSON text) and
    /// construction options.
    pub fn construct(
        &self,
        config_json: &str,
        options: Vec<BuildOption>,
    ) -> Result<Transform, LoadError> {
        let options: Vec<BuildOption_NE> = options.into_iter().map(BuildOption::wrap).collect();
        let (config, options) = (config_json.into(), options.as_slice().into());
        match self.module {
            Module::Full(m) => (m.new())(config, options)
                .into_result()
                .map(Transform::Full),
            Module::Unstreamed(m) => (m.new())(config, options)
                .into_result()
                .map(Transform::Unstreamed),
            Module::Baseline(m) => (m.new())(config, options)
                .into_result()
                .map(Transform::Baseline),
        }
        .map_err(|e| self.refused(e))
    }

    fn refused(&self, e: egresswatch_plugin_api::PluginError) -> LoadError {
        LoadError::Constructor {
            name: self.name().to_owned(),
            version: self.version().to_owned(),
            message: e.to_string(),
            problems: e.problems.into_vec(),
        }
    }
}

/// The platform's file name for the plugin library, e.g. `libegresswatch_plugin.so`.
pub fn library_file_name() -> String {
    format!(
        "{}{PLUGIN_BASE_NAME}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Where the plugin is looked for when neither the command line (`--plugin`,
/// `EGRESSWATCH_PLUGIN`) nor the config names it: beside the running executable, then in
/// `../lib/egresswatch/` from the executable's folder (the layout of the release tarball and
/// of an install under a prefix). The first that exists; beside the executable when none does.
pub fn default_plugin_path() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("."));
    let beside = dir.join(library_file_name());
    let installed = dir.join("../lib/egresswatch").join(library_file_name());
    if !beside.is_file() && installed.is_file() {
        installed
    } else {
        beside
    }
}

/// The ABI version this host was built with.
pub fn host_abi_version() -> &'static str {
    ABI_VERSION
}

/// Loads the plugin at `path`, checking its ABI version and layout.
///
/// A process loads one plugin: abi_stable keeps the first root module it loads.
pub fn load(path: &Path) -> Result<Plugin, LoadError> {
    if !path.is_file() {
        return Err(LoadError::NotFound {
            path: path.to_owned(),
        });
    }
    let classify = |e: LibraryError| classify(path, e);
    let header = lib_header_from_path(path).map_err(classify)?;
    let abi_version = header.version_strings().version.as_str();
    let module = match header.init_root_module::<PluginModRef>() {
        Ok(module) => Module::Full(module),
        Err(full @ LibraryError::AbiInstability(_)) => {
            match header.init_root_module::<unstreamed::PluginModRef>() {
                Ok(module) => Module::Unstreamed(module),
                Err(_) => match header.init_root_module::<baseline::PluginModRef>() {
                    Ok(module) => Module::Baseline(module),
                    Err(_) => return Err(classify(full)),
                },
            }
        }
        Err(e) => return Err(classify(e)),
    };
    Ok(Plugin {
        module,
        abi_version,
    })
}

/// A plugin's transform, whichever layout its plugin has. The methods are those of
/// [`egresswatch_plugin_api::Transform`]; for a baseline plugin the optional ones answer as the
/// ABI's defaults do.
pub enum Transform {
    /// From a plugin with every field this host knows.
    Full(TransformBox),
    /// From a build before the streamed state save.
    Unstreamed(unstreamed::TransformBox),
    /// From an older build (prefix methods only).
    Baseline(baseline::TransformBox),
}

impl Transform {
    /// See [`egresswatch_plugin_api::Transform::process`].
    pub fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError> {
        match self {
            Transform::Full(t) => t.process(events, now_ms),
            Transform::Unstreamed(t) => t.process(events, now_ms),
            Transform::Baseline(t) => t.process(events, now_ms),
        }
    }

    /// See [`egresswatch_plugin_api::Transform::routes`].
    pub fn routes(&self) -> RResult<RVec<RString>, PluginError> {
        match self {
            Transform::Full(t) => t.routes(),
            Transform::Unstreamed(t) => t.routes(),
            Transform::Baseline(t) => t.routes(),
        }
    }

    /// See [`egresswatch_plugin_api::Transform::save_state`].
    pub(crate) fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        match self {
            Transform::Full(t) => t.save_state(),
            Transform::Unstreamed(t) => t.save_state(),
            Transform::Baseline(t) => t.save_state(),
        }
    }

    /// Streams the model state into `out` as the plugin encodes it (see
    /// [`egresswatch_plugin_api::Transform::save_state_to`]); an older plugin, which cannot,
    /// saves it whole and it is written in one piece.
    pub(crate) fn save_state_to(&self, out: &mut dyn Write) -> Result<(), SaveError> {
        match self {
            Transform::Full(t) => {
                let mut sink = WriteSink::new(out);
                let saved = t.save_state_to(sink.as_sink()).into_result();
                // A write that failed fails the save, even when the plugin went on regardless.
                match (saved, sink.into_error()) {
                    (_, Some(e)) => Err(SaveError::Write(e)),
                    (Ok(()), None) => Ok(()),
                    (Err(e), None) => Err(SaveError::Plugin(e)),
                }
            }
            Transform::Unstreamed(_) | Transform::Baseline(_) => {
                let state = self.save_state().into_result().map_err(SaveError::Plugin)?;
                out.write_all(&state).map_err(SaveError::Write)
            }
        }
    }

    /// See [`egresswatch_plugin_api::Transform::load_state`].
    pub fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        match self {
            Transform::Full(t) => t.load_state(state),
            Transform::Unstreamed(t) => t.load_state(state),
            Transform::Baseline(t) => t.load_state(state),
        }
    }

    /// See [`egresswatch_plugin_api::Transform::warnings`]; none from a baseline plugin.
    pub fn warnings(&self) -> RResult<RVec<RString>, PluginError> {
        match self {
            Transform::Full(t) => t.warnings(),
            Transform::Unstreamed(t) => t.warnings(),
            Transform::Baseline(_) => RResult::ROk(RVec::new()),
        }
    }

    /// See [`egresswatch_plugin_api::Transform::metrics`]; none from a baseline plugin.
    pub fn metrics(&self) -> RResult<RVec<Metric>, PluginError> {
        match self {
            Transform::Full(t) => t.metrics(),
            Transform::Unstreamed(t) => t.metrics(),
            Transform::Baseline(_) => RResult::ROk(RVec::new()),
        }
    }

    /// See [`egresswatch_plugin_api::Transform::take_scores`]; an
    /// [`ErrorKind::Unsupported`] error from a baseline plugin.
    pub fn take_scores(&mut self) -> RResult<RVec<ScoreRecord>, PluginError> {
        match self {
            Transform::Full(t) => t.take_scores(),
            Transform::Unstreamed(t) => t.take_scores(),
            Transform::Baseline(_) => RResult::RErr(PluginError::new(
                ErrorKind::Unsupported,
                "this plugin was built against an older plugin ABI without score records",
            )),
        }
    }
}

fn classify(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NoRootModule { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            path,
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::AbiInstability(detail) => LoadError::IncompatibleLayout {
            path,
            detail: first_lines(&detail.to_string(), 12),
        },
        LibraryError::RootModule {
            err: RootModuleError::Unwound,
            ..
        } => LoadError::RootModulePanicked { path },
        other => LoadError::Other {
            path,
            detail: other.to_string(),
        },
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_is_beside_the_executable() {
        let path = default_plugin_path();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(path.parent(), exe.parent());
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains(PLUGIN_BASE_NAME));
    }

    #[test]
    fn a_missing_file_is_reported_as_not_found() {
        let err = load(Path::new("/nonexistent/libx.so")).err().unwrap();
        assert!(matches!(err, LoadError::NotFound { .. }));
        assert!(err.to_string().contains("/nonexistent/libx.so"));
    }
}
