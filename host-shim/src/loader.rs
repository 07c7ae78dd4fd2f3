//! Loading the detector plugin: finding the file, checking that it is a plugin built against a
//! compatible ABI, and constructing its transform. Every failure becomes a [`LoadError`] whose
//! message tells an operator what is wrong and what to do about it.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModuleError};
use egresswatch_plugin_api::{PluginModRef, TransformBox, ABI_VERSION};
use thiserror::Error;

/// Base name of the plugin library, without the platform's prefix and suffix.
pub const PLUGIN_BASE_NAME: &str = "egresswatch_plugin";

/// Why a plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// No file at the path.
    #[error("plugin not found: {path} (build it with `cargo build --release`, or set `plugin:` in the config or `--plugin`)")]
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
    },
}

/// A loaded plugin: its root module and what the loader learned about it.
#[derive(Clone, Copy)]
pub struct Plugin {
    module: PluginModRef,
    abi_version: &'static str,
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &'static str {
        (self.module.name())().as_str()
    }

    /// The plugin's own version.
    pub fn version(&self) -> &'static str {
        (self.module.version())().as_str()
    }

    /// The version of `egresswatch-plugin-api` the plugin was built against.
    pub fn abi_version(&self) -> &'static str {
        self.abi_version
    }

    /// Asks the plugin to load the rule files and folders in `paths` and report on each, as JSON.
    pub fn check_rules(&self, paths: &[PathBuf]) -> Result<String, String> {
        let json = serde_json::to_string(paths).map_err(|e| e.to_string())?;
        (self.module.check_rules())(json.as_str().into())
            .into_result()
            .map(String::from)
            .map_err(|e| e.to_string())
    }

    /// Constructs the plugin's transform from the detector configuration (JSON text).
    pub fn construct(&self, config_json: &str) -> Result<TransformBox, LoadError> {
        (self.module.new())(config_json.into())
            .into_result()
            .map_err(|e| LoadError::Constructor {
                name: self.name().to_owned(),
                version: self.version().to_owned(),
                message: e.to_string(),
            })
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

/// Where the plugin is looked for when neither the config nor the command line names it: beside
/// the running executable.
pub fn default_plugin_path() -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join(library_file_name())
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
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(classify)?;
    Ok(Plugin {
        module,
        abi_version,
    })
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
