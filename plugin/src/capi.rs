//! The C face: the same detector for hosts that load a shared library through a plain C ABI,
//! such as Fluent Bit's `lua` filter through LuaJIT's FFI. Declared in `include/egresswatch.h`
//! (kept by hand; a test builds a C program against it and compares every struct's layout
//! with the one here).
//!
//! The host never hands over the event's text. At creation it learns the list of paths the
//! detector reads ([`ew_field`]); per event it passes their values as typed [`EwValue`]s
//! (strings by pointer and length, numbers, booleans, arrays of those), read from its own
//! structure in the form the detector reads a JSON line (see `fields.rs`: the most nested form
//! of a path wins), and whether an object or something else stands at the parents of the
//! fields an alert writes (`EW_FIELD_NODE` entries). From those values this module writes a
//! small JSON object holding just them (nested where the record has an object or nothing, as
//! dotted keys below anything else: the scanner's fast path, with the same reading) and hands
//! it to [`Detector::evaluate_to_fields`]: the
//! one evaluation path every face uses, so rules, models, state and alerts are `run`'s. A
//! flagged event's alert comes back as a tree of [`EwNode`]s for the host to merge into its
//! record: each top-level node a field the event lacks, keyed by its dotted path.
//!
//! Safety and failure: every entry point checks its pointers and lengths, refuses text that is
//! not UTF-8 and inputs over the limits below with an error code (and a message from
//! [`ew_last_error`]), and catches any panic of the detector, which becomes [`EW_ERR_PANIC`].
//! A handle holds one detector behind a mutex: calls on one handle are serialised, so it may be
//! used from any one thread at a time (Fluent Bit's filter thread) and is never raced. What a
//! call returns by pointer (verdict nodes, route, metrics, error text) stays valid until the
//! next call on the same handle.
//!
//! The clock: [`ew_evaluate`] takes the host's clock (`now_ms`, milliseconds since the Unix
//! epoch) from the caller, as the plugin ABI does per batch; [`ew_clock_ms`] reads the system
//! clock for callers without one of their own (LuaJIT has no millisecond clock).
//!
//! This module is a host face inside the plugin library: besides construction, its state
//! save/load entry points are the only file I/O in the crate.

use std::ffi::{c_char, CString};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use egresswatch_plugin_api::state_file::{self, StateFile};
use serde_json::Value;

use crate::config::BuildOptions;
use crate::Detector;

mod boundary;
mod inner;
mod record;
#[cfg(test)]
mod tests;

use boundary::{guard, set_error, text, Failure};
use inner::{detector_json, random_seed, Inner};
use record::{entries, segments};

/// Success.
pub const EW_OK: i32 = 0;
/// A required pointer was null.
pub const EW_ERR_NULL: i32 = -1;
/// Text that is not UTF-8.
pub const EW_ERR_UTF8: i32 = -2;
/// An input over its limit (see the `EW_MAX_*` constants).
pub const EW_ERR_TOO_LARGE: i32 = -3;
/// An argument out of range: an unknown kind, an index past the end, a wrong value count.
pub const EW_ERR_INVALID: i32 = -4;
/// The configuration was refused (the message lists every problem by key path).
pub const EW_ERR_CONFIG: i32 = -5;
/// A state file that cannot be used (damaged, of another format or plugin, refused).
pub const EW_ERR_STATE: i32 = -6;
/// A file could not be read or written.
pub const EW_ERR_IO: i32 = -7;
/// The state file does not exist (nothing to load: the models learn from scratch).
pub const EW_ERR_NOT_FOUND: i32 = -8;
/// The detector panicked; the panic was caught and the call had no effect beyond it.
pub const EW_ERR_PANIC: i32 = -9;

/// Largest configuration text.
pub const EW_MAX_CONFIG_BYTES: usize = 16 << 20;
/// Largest file path.
pub const EW_MAX_PATH_BYTES: usize = 4096;
/// Largest single string value of an event.
pub const EW_MAX_VALUE_BYTES: usize = 1 << 20;
/// Largest event as the detector sees it (the values written as JSON), as `run`'s default
/// `max_line_bytes`.
pub const EW_MAX_EVENT_BYTES: usize = 1 << 20;
/// Most array elements in one event's values.
pub const EW_MAX_ITEMS: usize = 65_536;
/// Largest state file read.
pub const EW_MAX_STATE_BYTES: u64 = 1 << 30;

/// Kinds of [`EwValue`] and [`EwNode`].
pub const EW_ABSENT: u32 = 0;
/// JSON `null`.
pub const EW_NULL: u32 = 1;
/// `true` or `false` (`num` is 1 or 0).
pub const EW_BOOL: u32 = 2;
/// A number (`num`).
pub const EW_NUMBER: u32 = 3;
/// A string (`str`, `len`).
pub const EW_STRING: u32 = 4;
/// An array: its `count` elements follow (values: at index `len` of the same buffer; nodes:
/// right after it, each with its subtree).
pub const EW_ARRAY: u32 = 5;
/// An object (values: its content is not passed; nodes: its `count` members follow).
pub const EW_OBJECT: u32 = 6;
/// Something other than an object stands at a node's path (a string, a number, an array).
pub const EW_BLOCKED: u32 = 7;

/// A path whose value the detector reads: pass it (absent, null, bool, number, string, array,
/// object).
pub const EW_FIELD_VALUE: u32 = 0;
/// A path that is present when it or anything below it is (`rule` for `rule.name`): pass any
/// value, e.g. [`EW_OBJECT`], when so, else [`EW_ABSENT`].
pub const EW_FIELD_GROUP: u32 = 1;
/// A parent path of the fields alerts write: pass [`EW_BLOCKED`] when some form of it holds
/// something other than an object, else [`EW_OBJECT`] when some form holds an object, else
/// [`EW_ABSENT`].
pub const EW_FIELD_NODE: u32 = 2;

/// One value of an event, in the order of the field list; array elements go after the
/// fields, an array naming its first element's index in `len` and their number in `count`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EwValue {
    /// One of the `EW_*` value kinds.
    pub kind: u32,
    /// [`EW_ARRAY`]: number of elements.
    pub count: u32,
    /// [`EW_STRING`]: the bytes (UTF-8; not NUL-terminated; may be null when `len` is 0).
    pub str: *const c_char,
    /// [`EW_STRING`]: byte length; [`EW_ARRAY`]: index of the first element.
    pub len: usize,
    /// [`EW_NUMBER`]: the number; [`EW_BOOL`]: 1 or 0.
    pub num: f64,
}

/// One node of an alert: the top-level nodes are the fields to add (key: the dotted path),
/// each followed by its subtree in pre-order.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EwNode {
    /// One of the `EW_*` value kinds (never [`EW_ABSENT`] or [`EW_BLOCKED`]).
    pub kind: u32,
    /// [`EW_OBJECT`] / [`EW_ARRAY`]: number of members / elements that follow.
    pub count: u32,
    /// Member name in an object; the field's dotted path at the top level; empty in arrays.
    pub key: *const c_char,
    /// Byte length of `key`.
    pub key_len: usize,
    /// [`EW_STRING`]: the bytes (UTF-8, not NUL-terminated).
    pub str: *const c_char,
    /// [`EW_STRING`]: byte length.
    pub len: usize,
    /// [`EW_NUMBER`]: the number; [`EW_BOOL`]: 1 or 0.
    pub num: f64,
}

/// The verdict on one event.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EwVerdict {
    /// 1 when a rule flagged the event, else 0.
    pub flagged: i32,
    /// Number of nodes in `nodes` (0 unless flagged by a rule whose action annotates).
    pub node_count: u32,
    /// The alert fields to add (see [`EwNode`]).
    pub nodes: *const EwNode,
    /// Output the rule's action routes the event to (not NUL-terminated); null when none.
    pub route: *const c_char,
    /// Byte length of `route`.
    pub route_len: usize,
}

impl EwVerdict {
    const PASS: EwVerdict = EwVerdict {
        flagged: 0,
        node_count: 0,
        nodes: std::ptr::null(),
        route: std::ptr::null(),
        route_len: 0,
    };
}

/// A detector behind the C face. Opaque to C.
pub struct EwDetector {
    inner: Mutex<Inner>,
}

/// Runs `f` on the handle's detector, recording a failure's message on the handle.
///
/// # Safety
/// `d` must be null or a handle from [`ew_new`] not yet freed.
unsafe fn with_handle(
    d: *const EwDetector,
    what: &str,
    f: impl FnOnce(&mut Inner) -> Result<(), Failure>,
) -> i32 {
    // SAFETY: the caller vouches that a non-null `d` is a live handle.
    let Some(handle) = (unsafe { d.as_ref() }) else {
        return EW_ERR_NULL;
    };
    let mut inner = handle
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match guard(what, || f(&mut inner)) {
        Ok(()) => EW_OK,
        Err(failure) => {
            inner.error = CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
            failure.code
        }
    }
}

/// Creates a detector from configuration text (YAML or JSON: the `detector:` section, or a
/// whole egresswatch configuration holding one). Relative paths in it are resolved against
/// `base_dir` (null: the working directory). Returns null on failure, with the message in
/// `*error` (when `error` is not null; free it with [`ew_string_free`]).
///
/// # Safety
/// Pointers must be null or valid for their lengths; `error` null or writable.
#[no_mangle]
pub unsafe extern "C" fn ew_new(
    config: *const c_char,
    config_len: usize,
    base_dir: *const c_char,
    base_dir_len: usize,
    error: *mut *mut c_char,
) -> *mut EwDetector {
    let built = guard("building the detector", || {
        if config.is_null() {
            return Err(Failure::new(EW_ERR_NULL, "configuration: null pointer"));
        }
        // SAFETY: forwarded from the caller.
        let config = unsafe { text(config, config_len, EW_MAX_CONFIG_BYTES, "configuration")? };
        // SAFETY: forwarded from the caller.
        let base = unsafe { text(base_dir, base_dir_len, EW_MAX_PATH_BYTES, "base_dir")? };
        let options = BuildOptions {
            base_dir: (!base.is_empty()).then(|| PathBuf::from(base)),
            hash_seed: random_seed(),
            ..BuildOptions::default()
        };
        let detector = Detector::build(&detector_json(config)?, options)
            .map_err(|e| Failure::new(EW_ERR_CONFIG, e.message.to_string()))?;
        Ok(detector)
    });
    match built {
        Ok(detector) => {
            let entries = entries(&detector);
            let tree = segments(&entries);
            Box::into_raw(Box::new(EwDetector {
                inner: Mutex::new(Inner {
                    entries,
                    tree,
                    detector,
                    line: String::new(),
                    alert: Vec::new(),
                    values: Vec::new(),
                    nodes: Vec::new(),
                    route: String::new(),
                    metrics: String::new(),
                    error: CString::default(),
                    #[cfg(test)]
                    panic_next: false,
                }),
            }))
        }
        Err(failure) => {
            // SAFETY: forwarded from the caller.
            unsafe { set_error(error, &failure.message) };
            std::ptr::null_mut()
        }
    }
}

/// Frees a detector (null is ignored).
///
/// # Safety
/// `d` must be null or a handle from [`ew_new`], not used again.
#[no_mangle]
pub unsafe extern "C" fn ew_free(d: *mut EwDetector) {
    if !d.is_null() {
        // SAFETY: the caller gives up a handle made by `Box::into_raw` in `ew_new`.
        let handle = unsafe { Box::from_raw(d) };
        // Dropping runs the detector's destructors: keep a panic there on this side.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(handle)));
    }
}

/// Frees a string returned through an `error` argument (null is ignored).
///
/// # Safety
/// `s` must be null or a string from this library, not used again.
#[no_mangle]
pub unsafe extern "C" fn ew_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: the caller gives back a string made by `CString::into_raw`.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// The message of the last failed call on `d` (NUL-terminated, empty when none; valid until
/// the next call on `d`); null when `d` is null.
///
/// # Safety
/// `d` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ew_last_error(d: *const EwDetector) -> *const c_char {
    // SAFETY: the caller vouches that a non-null `d` is a live handle.
    let Some(handle) = (unsafe { d.as_ref() }) else {
        return std::ptr::null();
    };
    let inner = handle
        .inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    inner.error.as_ptr()
}

/// Number of entries in the field list (0 when `d` is null).
///
/// # Safety
/// `d` must be null or a live handle.
#[no_mangle]
pub unsafe extern "C" fn ew_field_count(d: *const EwDetector) -> usize {
    // SAFETY: the caller vouches that a non-null `d` is a live handle.
    match unsafe { d.as_ref() } {
        Some(handle) => handle
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len(),
        None => 0,
    }
}

/// Entry `index` of the field list: its dotted path (not NUL-terminated; valid as long as the
/// handle) and its kind (`EW_FIELD_*`).
///
/// # Safety
/// `d` must be null or a live handle; the out-pointers null or writable.
#[no_mangle]
pub unsafe extern "C" fn ew_field(
    d: *const EwDetector,
    index: usize,
    path: *mut *const c_char,
    path_len: *mut usize,
    kind: *mut u32,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_handle(d, "listing fields", |inner| {
            if path.is_null() || path_len.is_null() || kind.is_null() {
                return Err(Failure::new(EW_ERR_NULL, "ew_field: null out-pointer"));
            }
            let Some(entry) = inner.entries.get(index) else {
                return Err(Failure::new(
                    EW_ERR_INVALID,
                    format!(
                        "field {index} does not exist (there are {})",
                        inner.entries.len()
                    ),
                ));
            };
            // SAFETY: checked non-null; the caller vouches for the writes.
            *path = entry.path.as_ptr().cast();
            *path_len = entry.path.len();
            *kind = entry.kind;
            Ok(())
        })
    }
}

/// Evaluates one event from its values (`count` of them: one per field list entry, in its
/// order, then array elements) at the host's clock `now_ms` (milliseconds since the Unix
/// epoch: used for events without a readable time, and to distrust times more than a day
/// past it). Fills `*out`; on failure `*out` says "pass" (not flagged, nothing to add) and the
/// models have not seen the event.
///
/// # Safety
/// `d` a live handle or null; `values` null or valid for `count` values whose string pointers
/// are valid for their lengths; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn ew_evaluate(
    d: *mut EwDetector,
    values: *const EwValue,
    count: usize,
    now_ms: i64,
    out: *mut EwVerdict,
) -> i32 {
    // SAFETY: the caller vouches that a non-null `out` is writable.
    let Some(out) = (unsafe { out.as_mut() }) else {
        return EW_ERR_NULL;
    };
    *out = EwVerdict::PASS;
    // SAFETY: forwarded from the caller.
    unsafe {
        with_handle(d, "evaluating an event", |inner| {
            if values.is_null() && count > 0 {
                return Err(Failure::new(EW_ERR_NULL, "values: null pointer"));
            }
            if count > inner.entries.len() + EW_MAX_ITEMS {
                return Err(Failure::new(
                    EW_ERR_TOO_LARGE,
                    format!("{count} values, over the fields plus {EW_MAX_ITEMS} elements"),
                ));
            }
            let values = if count == 0 {
                &[]
            } else {
                // SAFETY: the caller vouches for `count` values; `count` is bounded above.
                std::slice::from_raw_parts(values, count)
            };
            // SAFETY: forwarded from the caller.
            inner.write_event(values)?;
            let mut verdict = EwVerdict::PASS;
            inner.evaluate(now_ms, &mut verdict)?;
            *out = verdict;
            Ok(())
        })
    }
}

/// Saves the models' state to the file at `path`, atomically, in the state file format of
/// `egresswatch run` (a file saved here is loaded there, and the other way round). The state
/// is streamed into a temporary file beside `path` as it is encoded, never held whole, and renamed over `path`
/// when complete: a save that fails ([`EW_ERR_IO`] naming the path, e.g. a full disk) leaves the
/// previous file as it was.
///
/// # Safety
/// `d` a live handle or null; `path` null or valid for `path_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ew_save_state(
    d: *mut EwDetector,
    path: *const c_char,
    path_len: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_handle(d, "saving state", |inner| {
            let path = state_path(path, path_len)?;
            let io = |e: &std::io::Error| {
                Failure::new(EW_ERR_IO, format!("writing {}: {e}", path.display()))
            };
            // Streamed into the file as it is encoded: the state is never held whole.
            let mut file = StateFile::create(&path, env!("CARGO_PKG_NAME")).map_err(|e| io(&e))?;
            if let Err(e) = inner.detector.save_state_to(&mut file) {
                return Err(match file.error() {
                    Some(written) => io(written),
                    None => Failure::new(EW_ERR_STATE, e.message.to_string()),
                });
            }
            // Refused when a write failed, whatever the detector made of it.
            file.commit().map(drop).map_err(|e| io(&e))
        })
    }
}

/// Loads the models' state from the file at `path` (written by [`ew_save_state`] or by
/// `egresswatch run`). [`EW_ERR_NOT_FOUND`] when there is no file; [`EW_ERR_STATE`] when it
/// cannot be used (the caller should set it aside rather than overwrite it); either way the
/// models are as they were.
///
/// # Safety
/// `d` a live handle or null; `path` null or valid for `path_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ew_load_state(
    d: *mut EwDetector,
    path: *const c_char,
    path_len: usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_handle(d, "loading state", |inner| {
            let path = state_path(path, path_len)?;
            let file = read_state(&path)?;
            let bytes = state_file::decode(env!("CARGO_PKG_NAME"), &file)
                .map_err(|e| Failure::new(EW_ERR_STATE, format!("{}: {e}", path.display())))?;
            inner.detector.load_state(bytes).map_err(|e| {
                Failure::new(EW_ERR_STATE, format!("{}: {}", path.display(), e.message))
            })
        })
    }
}

/// The state file path argument.
///
/// # Safety
/// As [`text`].
unsafe fn state_path(path: *const c_char, len: usize) -> Result<PathBuf, Failure> {
    if path.is_null() {
        return Err(Failure::new(EW_ERR_NULL, "state path: null pointer"));
    }
    // SAFETY: forwarded from the caller.
    let path = unsafe { text(path, len, EW_MAX_PATH_BYTES, "state path")? };
    if path.is_empty() {
        return Err(Failure::new(EW_ERR_INVALID, "state path is empty"));
    }
    Ok(PathBuf::from(path))
}

/// Reads a state file of at most [`EW_MAX_STATE_BYTES`], a regular file only.
fn read_state(path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    let io = |e: std::io::Error| Failure::new(EW_ERR_IO, format!("{}: {e}", path.display()));
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                EW_ERR_NOT_FOUND,
                format!("{}: no state file yet", path.display()),
            ))
        }
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() {
        return Err(Failure::new(
            EW_ERR_IO,
            format!("{}: not a regular file", path.display()),
        ));
    }
    if meta.len() > EW_MAX_STATE_BYTES {
        return Err(Failure::new(
            EW_ERR_STATE,
            format!(
                "{}: {} bytes, over the limit of {EW_MAX_STATE_BYTES}",
                path.display(),
                meta.len()
            ),
        ));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.by_ref()
        .take(EW_MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > EW_MAX_STATE_BYTES {
        return Err(Failure::new(
            EW_ERR_STATE,
            format!("{}: grew over the limit while read", path.display()),
        ));
    }
    Ok(bytes)
}

/// The detector's metrics as JSON (`[{"name", "help", "kind": "counter"|"gauge", "labels":
/// {..}, "value"}, ..]`, not NUL-terminated; valid until the next call on `d`).
///
/// # Safety
/// `d` a live handle or null; the out-pointers null or writable.
#[no_mangle]
pub unsafe extern "C" fn ew_metrics_json(
    d: *mut EwDetector,
    json: *mut *const c_char,
    json_len: *mut usize,
) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe {
        with_handle(d, "taking metrics", |inner| {
            if json.is_null() || json_len.is_null() {
                return Err(Failure::new(
                    EW_ERR_NULL,
                    "ew_metrics_json: null out-pointer",
                ));
            }
            let list: Vec<Value> = inner
                .detector
                .metrics()
                .iter()
                .map(|m| {
                    let labels: serde_json::Map<String, Value> = m
                        .labels
                        .iter()
                        .map(|l| (l.name.to_string(), Value::from(l.value.as_str())))
                        .collect();
                    serde_json::json!({
                        "name": m.name.as_str(),
                        "help": m.help.as_str(),
                        "kind": if m.kind == egresswatch_plugin_api::MetricKind::GAUGE {
                            "gauge"
                        } else {
                            "counter"
                        },
                        "labels": labels,
                        "value": m.value,
                    })
                })
                .collect();
            inner.metrics = Value::Array(list).to_string();
            // SAFETY: checked non-null; the caller vouches for the writes.
            *json = inner.metrics.as_ptr().cast();
            *json_len = inner.metrics.len();
            Ok(())
        })
    }
}

/// The system clock, in milliseconds since the Unix epoch (for callers without a clock of
/// their own to pass as `now_ms`).
#[no_mangle]
pub extern "C" fn ew_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// This library's version (NUL-terminated, static).
#[no_mangle]
pub extern "C" fn ew_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
