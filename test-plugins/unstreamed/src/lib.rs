//! A plugin as a build of this ABI version from before the streamed state save is: it exports
//! the [`unstreamed`](egresswatch_plugin_api::unstreamed) layout (everything up to
//! `take_scores`, no `save_state_to`). The loader must accept it with everything it has (rule
//! check, warnings, metrics), and the host must save its state whole. Its transform passes
//! every event. Used only by the loader's tests.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use egresswatch_plugin_api::unstreamed::{
    PluginMod, PluginModRef, Transform, TransformBox, Transform_TO,
};
use egresswatch_plugin_api::{
    catch_panic, BuildOption_NE, Metric, MetricKind, PluginError, RulesReport, ScoreRecord, Verdict,
};

/// Exports the root module of the layout before the streamed save.
#[export_root_module]
pub fn get_library() -> PluginModRef {
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
    RStr::from_str("unstreamed-test-plugin")
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
    catch_panic("constructing the unstreamed test plugin", || {
        Ok(Transform_TO::from_value(PassAll, TD_Opaque))
    })
}

/// Reports no rule files and no problems: enough to show that the host can call it.
#[sabi_extern_fn]
fn check_rules(
    _config: RStr<'_>,
    _options: RSlice<'_, BuildOption_NE>,
) -> RResult<RulesReport, PluginError> {
    RResult::ROk(RulesReport {
        files: RVec::new(),
        problems: RVec::new(),
        warnings: RVec::from(vec![RString::from(
            "unstreamed-test-plugin checked the rules",
        )]),
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

    /// A fixed state, so that the host's whole save of this plugin can be checked.
    fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(RVec::from(&b"unstreamed-test-plugin state"[..]))
    }

    fn load_state(&mut self, _state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        RResult::ROk(())
    }

    fn warnings(&self) -> RResult<RVec<RString>, PluginError> {
        RResult::ROk(RVec::from(vec![RString::from(
            "unstreamed-test-plugin says hello",
        )]))
    }

    fn metrics(&self) -> RResult<RVec<Metric>, PluginError> {
        RResult::ROk(RVec::from(vec![Metric {
            name: "egresswatch_unstreamed_test".into(),
            help: "A metric of the unstreamed test plugin.".into(),
            kind: MetricKind::GAUGE,
            labels: RVec::new(),
            value: 7.0,
        }]))
    }

    fn take_scores(&mut self) -> RResult<RVec<ScoreRecord>, PluginError> {
        RResult::ROk(RVec::new())
    }
}
