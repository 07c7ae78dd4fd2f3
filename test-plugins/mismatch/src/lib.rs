//! A plugin that claims the host's ABI version but whose root module has another layout: its
//! `new` takes a number where the real one takes configuration text. This is what a plugin built
//! from a locally edited copy of the ABI crate looks like; the version check passes, so only the
//! layout check can refuse it. Used only by the loader's failure tests.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_extern_fn, sabi_types::VersionStrings, std_types::RStr,
    StableAbi,
};

/// The root module: the real one's names, with `new` of another type.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// As the real one.
    pub name: extern "C" fn() -> RStr<'static>,
    /// As the real one.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Not the real constructor's signature.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(u64) -> u64,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings =
        VersionStrings::new(egresswatch_plugin_api::ABI_VERSION);
}

#[sabi_extern_fn]
fn name() -> RStr<'static> {
    RStr::from_str("mismatch-test-plugin")
}

#[sabi_extern_fn]
fn version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

#[sabi_extern_fn]
fn new(n: u64) -> u64 {
    n
}

/// Exports the mismatched root module.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod { name, version, new }.leak_into_prefix()
}
