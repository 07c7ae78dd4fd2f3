//! The smallest layout a plugin of this ABI version may have: the prefix fields of
//! [`PluginMod`](crate::PluginMod) and the prefix methods of [`Transform`](crate::Transform),
//! nothing after them.
//!
//! A plugin built against an older 0.2 release exports exactly this (those releases may lack
//! any field or method added after the prefix). The loader's tests build one from this module to
//! show that such a plugin loads, and that the host degrades gracefully: no `check_rules`, no
//! warnings, no metrics, no score records. This module is frozen: it only changes when the ABI's
//! major version does, with the prefix.
//!
//! The names here are the same as the crate root's on purpose: abi_stable compares type names
//! and field layouts, not module paths, so these types are what an older build of the root types
//! looks like to the loader.

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

use crate::{BuildOption_NE, PluginError, Verdict};

/// [`crate::PluginMod`] without its optional fields.
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
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// An owned [`Transform`] of this layout.
pub type TransformBox = Transform_TO<'static, RBox<()>>;

/// [`crate::Transform`] without its optional methods.
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
}
