//! The stable ABI between the `egresswatch` host and its detector plugin.
//!
//! This is the only crate both sides depend on. Everything that crosses the boundary is declared
//! here with [`abi_stable`], so that the host can check, when it loads a plugin, that the plugin
//! was built against a compatible version of this crate and that every type has the layout the
//! host expects. A mismatch is reported as an error by the loader; it never becomes undefined
//! behaviour.
//!
//! # Shape of the interface
//!
//! The surface is deliberately small, string and bytes based, and batch oriented:
//!
//! - [`PluginModRef`] is the root module the plugin exports. It names the plugin, and its
//!   [`new`](PluginMod::new) constructor turns configuration text (JSON) into a transform.
//! - [`Transform`] processes a batch of raw event lines and returns one [`Verdict`] per line:
//!   pass the original bytes unchanged, replace them with new text, route the event to a named
//!   output, or both. The host never re-serialises an event the plugin passed.
//! - Model state is saved and loaded as opaque bytes; metrics are a JSON snapshot.
//!
//! # Growing the interface
//!
//! [`PluginMod`] is a prefix type: fields may be appended after the one marked
//! `#[sabi(last_prefix_field)]` without breaking plugins built against an older version; the
//! host sees such fields as absent. The same holds for the methods of [`Transform`].
//!
//! # Panics
//!
//! A panic must never unwind across the boundary. Plugins wrap every entry point in
//! [`catch_panic`], which turns a panic into a [`PluginError`] of kind [`ErrorKind::Panic`].

// `#[sabi_trait]` expands to impl blocks inside a const item, which this lint flags; the
// expansion is abi_stable's and sound.
#![allow(non_local_definitions)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// Name of the output that receives every event not routed elsewhere.
pub const DEFAULT_OUTPUT: &str = "default";

/// Name of the output that receives unreadable events when the host is configured to keep them
/// apart, and failed batches when it fails closed.
pub const ERRORS_OUTPUT: &str = "errors";

/// The root module a plugin exports with `#[export_root_module]`.
///
/// Obtain it on the host side with [`RootModule::load_from_file`] on [`PluginModRef`], which
/// checks the ABI version and the layout of every type reachable from here.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's name, e.g. `egresswatch-plugin`.
    pub name: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version (its crate version), e.g. `0.1.0`.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Loads the rule files and folders named in `paths` (a JSON array of strings) and returns
    /// a JSON report of what each file holds and whether it would run.
    pub check_rules: extern "C" fn(paths: RStr<'_>) -> RResult<RString, PluginError>,
    /// Builds a transform from configuration text (a JSON object; its schema is the plugin's).
    ///
    /// Returns an error, never panics: a plugin catches its own panics with [`catch_panic`].
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>) -> RResult<TransformBox, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The version of this ABI crate, which is what the loader compares with a plugin's.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An owned, type-erased [`Transform`] as returned by [`PluginMod::new`].
pub type TransformBox = Transform_TO<'static, RBox<()>>;

/// The per-batch detector a plugin constructs.
///
/// Implementations must not panic across the boundary; see [`catch_panic`].
#[sabi_trait]
pub trait Transform: Send {
    /// Processes a batch of events, each one raw line without its line terminator, and returns
    /// exactly one verdict per event, in the same order.
    ///
    /// An error means the whole batch failed; the host then applies its failure policy.
    fn process(&mut self, events: RSlice<'_, RStr<'_>>) -> RResult<RVec<Verdict>, PluginError>;

    /// Output names the configured rules may route to, so the host can check its outputs.
    fn routes(&self) -> RVec<RString>;

    /// A snapshot of the plugin's metrics as a JSON object.
    fn metrics(&self) -> RString;

    /// Serialises the model state; the format is the plugin's and carries its own version.
    fn save_state(&self) -> RResult<RVec<u8>, PluginError>;

    /// Replaces the model state with one produced by [`Transform::save_state`].
    ///
    /// On error the previous state is kept.
    #[sabi(last_prefix_field)]
    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError>;
}

/// What the host does with one event.
///
/// `replacement` and `route` are independent: neither set means pass the original bytes to the
/// default output; a replacement means write that text instead; a route means send the event
/// (original or replaced) to that named output instead of the default one.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Whether the plugin could read the event (valid JSON object).
    pub status: EventStatus,
    /// New text for the event (a complete JSON object, no line terminator), if annotated.
    pub replacement: ROption<RString>,
    /// Named output to send the event to instead of `default`, if routed.
    pub route: ROption<RString>,
}

impl Verdict {
    /// A verdict that passes a readable event through unchanged.
    pub const PASS: Verdict = Verdict {
        status: EventStatus::Ok,
        replacement: ROption::RNone,
        route: ROption::RNone,
    };

    /// A verdict for an event the plugin could not read; the host passes it through unchanged
    /// or sends it to its errors output.
    pub const UNREADABLE: Verdict = Verdict {
        status: EventStatus::Unreadable,
        replacement: ROption::RNone,
        route: ROption::RNone,
    };
}

/// Whether the plugin could read an event.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventStatus {
    /// The event was a JSON object and was evaluated.
    #[default]
    Ok,
    /// The event was not a JSON object; it was not evaluated.
    Unreadable,
}

/// An error crossing the boundary: a kind for programs and a message for people.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// What went wrong, broadly.
    pub kind: ErrorKind,
    /// A complete message naming the file, line and field at fault where there is one.
    pub message: RString,
}

impl PluginError {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind,
            message: RString::from(message.into()),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}

/// The broad kind of a [`PluginError`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration text is invalid.
    Config,
    /// A rule file could not be loaded or is invalid.
    Rules,
    /// The GeoIP database could not be opened.
    Geo,
    /// Saved state could not be read or written.
    State,
    /// The plugin panicked; the panic was caught at the boundary.
    Panic,
    /// Anything else.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::Rules => "rule error",
            ErrorKind::Geo => "GeoIP error",
            ErrorKind::State => "state error",
            ErrorKind::Panic => "plugin panicked",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// Runs `f`, turning a panic into a [`PluginError`] of kind [`ErrorKind::Panic`] whose message
/// says what was being done (`what`) and carries the panic message.
///
/// Every function a plugin exposes through this ABI should be wrapped in it.
pub fn catch_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            RResult::RErr(PluginError::new(
                ErrorKind::Panic,
                format!("while {what}: {detail}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_panic_turns_a_panic_into_an_error_with_its_message() {
        let result: RResult<(), PluginError> = catch_panic("testing", || panic!("boom {}", 7));
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panic);
        assert_eq!(err.message.as_str(), "while testing: boom 7");
    }

    #[test]
    fn catch_panic_passes_results_through() {
        assert_eq!(catch_panic("x", || Ok(3)).unwrap(), 3);
        let err = catch_panic::<()>("x", || Err(PluginError::new(ErrorKind::Config, "bad")));
        assert_eq!(err.unwrap_err().to_string(), "configuration error: bad");
    }
}
