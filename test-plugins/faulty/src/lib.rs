//! A plugin with the right ABI whose construction fails on purpose. Used only by the loader's
//! failure tests. Its behaviour is chosen by the configuration text:
//!
//! - `{"fail": "error"}`: the constructor returns an error;
//! - `{"fail": "panic"}`: the constructor panics (caught at the boundary by `catch_panic`);
//!
//! and by the environment: with `EGRESSWATCH_TEST_ROOT_PANIC=1` the root-module loader itself
//! panics, which abi_stable catches and reports.

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    std_types::{RResult, RStr, RString},
};
use egresswatch_plugin_api::{
    catch_panic, ErrorKind, PluginError, PluginMod, PluginModRef, TransformBox,
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
        check_rules,
        new: new_transform,
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
fn check_rules(_paths: RStr<'_>) -> RResult<RString, PluginError> {
    RResult::RErr(PluginError::new(
        ErrorKind::Internal,
        "not implemented by the test plugin",
    ))
}

#[sabi_extern_fn]
fn new_transform(config: RStr<'_>) -> RResult<TransformBox, PluginError> {
    catch_panic("constructing the faulty test plugin", || {
        if config.as_str().contains("\"panic\"") {
            panic!("deliberate panic in the constructor");
        }
        Err(PluginError::new(
            ErrorKind::Config,
            "deliberate failure: this test plugin never constructs",
        ))
    })
}
