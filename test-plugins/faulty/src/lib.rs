//! A plugin with the right ABI whose construction fails on purpose. Used only by the loader's
//! failure tests. Its behaviour is chosen by the configuration text:
//!
//! - `{"fail": "error"}`: the constructor returns an error;
//! - `{"fail": "panic"}`: the constructor panics (caught at the boundary by `catch_panic`);
//! - `{"fail": "batch"}`: the constructor succeeds, but every batch whose first event contains
//!   `boom` panics (caught, so the host sees an error for that batch); other batches pass;
//!   taking its metrics panics too (caught: the host logs that they are unavailable);
//!
//! checking rules always panics (caught, reported as the plugin's error);
//!
//! and by the environment: with `EGRESSWATCH_TEST_ROOT_PANIC=1` the root-module loader itself
//! panics, which abi_stable catches and reports.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use egresswatch_plugin_api::{
    catch_panic, BuildOption_NE, ErrorKind, Metric, PluginError, PluginMod, PluginModRef,
    RulesReport, Transform, TransformBox, Transform_TO, Verdict,
};

/// Exports the root module, or panics when asked to by the environment.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    if std::env::var_os("EGRESSWATCH_TEST_ROOT_PANIC").is_some() {
        panic!("root module refused to load (test)");
    }
    PluginMod {
        name,
        version,
        new: new_transform,
        check_rules,
    }
    .leak_into_prefix()
}

#[sabi_extern_fn]
fn name() -> RStr<'static> {
    RStr::from_str("faulty-test-plugin")
}

#[sabi_extern_fn]
fn version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

#[sabi_extern_fn]
fn check_rules(
    _config: RStr<'_>,
    _options: RSlice<'_, BuildOption_NE>,
) -> RResult<RulesReport, PluginError> {
    catch_panic("checking rules in the faulty test plugin", || {
        panic!("deliberate panic while checking rules")
    })
}

#[sabi_extern_fn]
fn new_transform(
    config: RStr<'_>,
    _options: RSlice<'_, BuildOption_NE>,
) -> RResult<TransformBox, PluginError> {
    catch_panic("constructing the faulty test plugin", || {
        if config.as_str().contains("\"panic\"") {
            panic!("deliberate panic in the constructor");
        }
        if config.as_str().contains("\"batch\"") {
            return Ok(Transform_TO::from_value(PanicsOnBoom, TD_Opaque));
        }
        Err(PluginError::new(
            ErrorKind::Config,
            "deliberate failure: this test plugin never constructs",
        ))
    })
}

/// A transform that panics on any batch whose first event mentions `boom`.
struct PanicsOnBoom;

impl Transform for PanicsOnBoom {
    fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        _now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError> {
        catch_panic("processing a batch in the faulty test plugin", || {
            if events.first().is_some_and(|e| e.as_str().contains("boom")) {
                panic!("deliberate panic on a batch");
            }
            Ok(events.iter().map(|_| Verdict::PASS).collect())
        })
    }

    fn routes(&self) -> RResult<RVec<RString>, PluginError> {
        RResult::ROk(RVec::new())
    }

    fn metrics(&self) -> RResult<RVec<Metric>, PluginError> {
        catch_panic("taking metrics in the faulty test plugin", || {
            panic!("deliberate panic while taking metrics")
        })
    }

    fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(RVec::new())
    }

    fn load_state(&mut self, _state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
}
