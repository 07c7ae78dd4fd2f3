//! The full layout of this ABI version before [`Transform::save_state_to`](crate::Transform::save_state_to)
//! was appended: every field of [`PluginMod`](crate::PluginMod) and every method of
//! [`Transform`](crate::Transform) up to `take_scores`.
//!
//! abi_stable refuses a library whose prefix types have fewer fields than the host's (see
//! [`baseline`](crate::baseline)), so a plugin built before the streamed save would otherwise
//! load only as a baseline plugin and lose its warnings, metrics, score records and rule check.
//! The loader checks this layout between the full one and the baseline; the host saves such a
//! plugin's state whole, through `save_state`. This module is frozen: it only changes when the
//! ABI's major version does.
//!
//! As in `baseline`, the names are the crate root's on purpose: abi_stable compares type names
//! and field layouts, not module paths.

// See the crate root: the lint fires on abi_stable's expansion.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::{BuildOption_NE, Metric, PluginError, RulesReport, ScoreRecord, Verdict};

/// [`crate::PluginMod`] as it was.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// As [`crate::PluginMod::name`].
    pub name: extern "C" fn() -> RStr<'static>,
    /// As [`crate::PluginMod::version`].
    pub version: extern "C" fn() -> RStr<'static>,
    /// As [`crate::PluginMod::new`].
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(
        config: RStr<'_>,
        options: RSlice<'_, BuildOption_NE>,
    ) -> RResult<TransformBox, PluginError>,
    /// As [`crate::PluginMod::check_rules`].
    pub check_rules: extern "C" fn(
        config: RStr<'_>,
        options: RSlice<'_, BuildOption_NE>,
    ) -> RResult<RulesReport, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// An owned [`Transform`] of this layout.
pub type TransformBox = Transform_TO<'static, RBox<()>>;

/// [`crate::Transform`] as it was: without `save_state_to`.
#[sabi_trait]
pub trait Transform: Send {
    /// As [`crate::Transform::process`].
    fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError>;

    /// As [`crate::Transform::routes`].
    fn routes(&self) -> RResult<RVec<RString>, PluginError>;

    /// As [`crate::Transform::save_state`].
    fn save_state(&self) -> RResult<RVec<u8>, PluginError>;

    /// As [`crate::Transform::load_state`].
    #[sabi(last_prefix_field)]
    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// As [`crate::Transform::warnings`] (a plugin of this layout has it: the layout check
    /// refuses one without).
    fn warnings(&self) -> RResult<RVec<RString>, PluginError>;

    /// As [`crate::Transform::metrics`].
    fn metrics(&self) -> RResult<RVec<Metric>, PluginError>;

    /// As [`crate::Transform::take_scores`].
    fn take_scores(&mut self) -> RResult<RVec<ScoreRecord>, PluginError>;
}
