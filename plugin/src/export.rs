//! The root module this library exports through the stable ABI.
//!
//! Every entry point that runs detector code wraps it in [`catch_panic`], so that no panic
//! unwinds into the host (`name` and `version` only return constants).

use abi_stable::{
    export_root_module,
    prefix_type::PrefixTypeTrait,
    sabi_extern_fn,
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString, RVec},
};
use egresswatch_plugin_api::{
    catch_panic, BuildOption, BuildOption_NE, ErrorKind, Metric, PluginError, PluginMod,
    PluginModRef, RulesReport, ScoreRecord, SinkWriter, StateSinkMut, Transform, TransformBox,
    Transform_TO, Verdict,
};

use crate::config::{BuildOptions, DetectorConfig};
use crate::Detector;

/// Exports the root module; called once by the loader.
#[export_root_module]
pub fn get_library() -> PluginModRef {
    PluginMod {
        name: plugin_name,
        version: plugin_version,
        new: new_transform,
        check_rules,
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

/// The options as the detector takes them; an option this build does not know is an error.
pub fn build_options(options: &[BuildOption_NE]) -> Result<BuildOptions, PluginError> {
    let mut out = BuildOptions::default();
    for option in options {
        match option.as_enum() {
            Ok(BuildOption::BaseDir(dir)) => out.base_dir = Some(dir.as_str().into()),
            Ok(BuildOption::HashSeed(seed)) => out.hash_seed = *seed,
            Ok(BuildOption::Threshold(t)) => out.threshold = Some(*t),
            Ok(BuildOption::LearningBuckets(n)) => out.learning_buckets = Some(*n),
            Ok(BuildOption::ScoreRecords) => out.score_records = true,
            Ok(BuildOption::RulePaths(paths)) => {
                out.rule_paths = Some(paths.iter().map(|p| p.as_str().into()).collect());
            }
            _ => {
                return Err(PluginError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "option #{} is not known to this plugin (built against an older ABI)",
                        option.get_discriminant()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[sabi_extern_fn]
fn new_transform(
    config: RStr<'_>,
    options: RSlice<'_, BuildOption_NE>,
) -> RResult<TransformBox, PluginError> {
    catch_panic("constructing the detector", || {
        let detector = Detector::build(config.as_str(), build_options(&options)?)?;
        Ok(Transform_TO::from_value(detector, TD_Opaque))
    })
}

#[sabi_extern_fn]
fn check_rules(
    config: RStr<'_>,
    options: RSlice<'_, BuildOption_NE>,
) -> RResult<RulesReport, PluginError> {
    catch_panic("checking rules", || {
        let (config, unknown) =
            DetectorConfig::parse(config.as_str()).map_err(PluginError::config)?;
        let mut report = crate::check::check(&config, &build_options(&options)?);
        report.problems = unknown
            .iter()
            .map(|(path, m)| RString::from(format!("{path}: {m}")))
            .chain(report.problems)
            .collect();
        Ok(report)
    })
}

impl Transform for Detector {
    fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError> {
        catch_panic("processing a batch", || {
            Ok(Detector::process(self, events.iter().map(RStr::as_str), now_ms).into())
        })
    }

    fn routes(&self) -> RResult<RVec<RString>, PluginError> {
        catch_panic("listing routes", || {
            Ok(Detector::routes(self)
                .into_iter()
                .map(RString::from)
                .collect())
        })
    }

    fn save_state(&self) -> RResult<RVec<u8>, PluginError> {
        catch_panic("saving state", || {
            Ok(RVec::from(Detector::save_state(self)?))
        })
    }

    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        catch_panic("loading state", || {
            Detector::load_state(self, state.as_slice())
        })
    }

    fn save_state_to(&self, sink: StateSinkMut<'_>) -> RResult<(), PluginError> {
        catch_panic("saving state", || {
            let mut out = SinkWriter::new(sink);
            let saved = Detector::save_state_to(self, &mut out);
            // The host's own error, when its sink failed, over what the detector made of it.
            match (saved, out.into_error()) {
                (Ok(()), _) => Ok(()),
                (Err(_), Some(sink)) => Err(sink),
                (Err(e), None) => Err(e),
            }
        })
    }

    fn warnings(&self) -> RResult<RVec<RString>, PluginError> {
        catch_panic("listing warnings", || {
            Ok(Detector::warnings(self)
                .iter()
                .map(|w| RString::from(w.as_str()))
                .collect())
        })
    }

    fn metrics(&self) -> RResult<RVec<Metric>, PluginError> {
        catch_panic("taking metrics", || Ok(Detector::metrics(self).into()))
    }

    fn take_scores(&mut self) -> RResult<RVec<ScoreRecord>, PluginError> {
        catch_panic("taking score records", || {
            Ok(Detector::take_scores(self).into())
        })
    }
}
