//! A plugin built against the first ABI, 0.1.0: it exports a root module of that version (whose
//! layout differs from today's too). The loader must refuse it with a message saying which ABI
//! it speaks and what to do. Used only by the loader's failure tests.

use abi_stable::{
    declare_root_module_statics, export_root_module,
    library::RootModule,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_types::VersionStrings,
    std_types::{RStr, RString},
    StableAbi,
};

/// The incompatible root module: same names, different version and fields.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OldModRef)))]
#[sabi(missing_field(panic))]
pub struct OldMod {
    /// A constructor with a different signature from the real one.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(RStr<'_>) -> RString,
}

impl RootModule for OldModRef {
    declare_root_module_statics! {OldModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("0.1.0");
}

#[sabi_extern_fn]
fn old_new(config: RStr<'_>) -> RString {
    RString::from(config.as_str())
}

/// Exports the incompatible root module.
#[export_root_module]
pub fn get_library() -> OldModRef {
    OldMod { new: old_new }.leak_into_prefix()
}
