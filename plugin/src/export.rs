//! The root module this library exports through the stable ABI.
//!
//! Each entry point wraps the [`Detector`] call in [`catch_panic`] so that no panic unwinds
//! into the host.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use egresswatch_plugin_api::{
    catch_panic, ErrorKind, PluginError, PluginMod, PluginModRef, Transform, TransformBox,
    Transform_TO, Verdict,
};

use crate::Detector;

/// Exports the root module; called once by the loader.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod {
        name: plugin_name,
        version: plugin_version,
        check_rules,
        new: new_transform,
    }
    .leak_into_prefix()
}

#[sabi_extern_fn]
fn plugin_name() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_NAME"))
}

#[sabi_extern_fn]
fn plugin_version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

#[sabi_extern_fn]
fn check_rules(paths: RStr<'_>) -> RResult<RString, PluginError> {
    catch_panic("checking rules", || {
        let paths: Vec<std::path::PathBuf> = serde_json::from_str(paths.as_str())
            .map_err(|e| PluginError::new(ErrorKind::Config, format!("rule paths: {e}")))?;
        let report = crate::check::check(&paths);
        serde_json::to_string(&report)
            .map(RString::from)
            .map_err(|e| PluginError::new(ErrorKind::Internal, e.to_string()))
    })
}

#[sabi_extern_fn]
fn new_transform(config: RStr<'_>) -> RResult<TransformBox, PluginError> {
    catch_panic("constructing the detector", || {
        let detector = Detector::from_json(config.as_str())?;
        Ok(Transform_TO::from_value(detector, TD_Opaque))
    })
}

impl Transform for Detector {
    fn process(&mut self, events: RSlice<'_, RStr<'_>>) -> RResult<RVec<Verdict>, PluginError> {
        catch_panic("processing a batch", || {
            let mut verdicts = RVec::with_capacity(events.len());
            for event in events.iter() {
                verdicts.push(self.evaluate(event.as_str()));
            }
            Ok(verdicts)
        })
    }

    fn routes(&self) -> RVec<RString> {
        self.routes().into_iter().map(RString::from).collect()
    }

    fn metrics(&self) -> RString {
        RString::from(self.metrics_json())
    }

    fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        catch_panic("saving state", || Ok(RVec::from(self.save_state()?)))
    }

    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        catch_panic("loading state", || self.load_state(state.as_slice()))
    }
}
