//! A plugin as an older build of this ABI version may be: it exports the
//! [`baseline`](egresswatch_plugin_api::baseline) layout, the prefix fields only (no
//! `check_rules`, no warnings, metrics or score records). The loader must accept it and the host
//! must work without what it lacks. Its transform passes every event and routes nothing. Used
//! only by the loader's tests.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use egresswatch_plugin_api::baseline::{
    PluginMod, PluginModRef, Transform, TransformBox, Transform_TO,
};
use egresswatch_plugin_api::{catch_panic, BuildOption_NE, PluginError, Verdict};

/// Exports the baseline root module.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod {
        name,
        version,
        new: new_transform,
    }
    .leak_into_prefix()
}

#[sabi_extern_fn]
fn name() -> RStr<'static> {
    RStr::from_str("older-test-plugin")
}

#[sabi_extern_fn]
fn version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

#[sabi_extern_fn]
fn new_transform(
    _config: RStr<'_>,
    _options: RSlice<'_, BuildOption_NE>,
) -> RResult<TransformBox, PluginError> {
    catch_panic("constructing the older test plugin", || {
        Ok(Transform_TO::from_value(PassAll, TD_Opaque))
    })
}

/// Passes every event.
struct PassAll;

impl Transform for PassAll {
    fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        _now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError> {
        RResult::ROk(events.iter().map(|_| Verdict::PASS).collect())
    }

    fn routes(&self) -> RResult<RVec<RString>, PluginError> {
        RResult::ROk(RVec::new())
    }

    /// A fixed state, so that the host's save of an older plugin (whole, not streamed) can be
    /// checked byte for byte.
    fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(RVec::from(&b"older-test-plugin state"[..]))
    }

    fn load_state(&mut self, _state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
}
