//! Crossing the C boundary safely: error codes with messages ([`Failure`]), panics caught
//! ([`guard`]), and checked reads of caller pointers.

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{EW_ERR_NULL, EW_ERR_PANIC, EW_ERR_TOO_LARGE, EW_ERR_UTF8};

/// An error code with its message.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) code: i32,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Runs `f`, turning a panic into [`EW_ERR_PANIC`] with its message.
pub(super) fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(Failure::new(
                EW_ERR_PANIC,
                format!("the detector panicked while {what}: {message}"),
            ))
        }
    }
}

/// The bytes at `ptr`: null is [`EW_ERR_NULL`] unless `len` is 0 and `optional`.
///
/// # Safety
/// `ptr` must be null or valid for reads of `len` bytes for `'a`.
unsafe fn bytes<'a>(
    ptr: *const c_char,
    len: usize,
    max: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if len > max {
        return Err(Failure::new(
            EW_ERR_TOO_LARGE,
            format!("{what} is {len} bytes, over the limit of {max}"),
        ));
    }
    if ptr.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(Failure::new(
                EW_ERR_NULL,
                format!("{what}: null pointer with length {len}"),
            ))
        };
    }
    // SAFETY: the caller vouches for `len` readable bytes at a non-null `ptr`; `len` is at
    // most `max`, far below isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// The text at `ptr`, which must be UTF-8.
///
/// # Safety
/// As [`bytes`].
pub(super) unsafe fn text<'a>(
    ptr: *const c_char,
    len: usize,
    max: usize,
    what: &str,
) -> Result<&'a str, Failure> {
    // SAFETY: forwarded from the caller.
    let b = unsafe { bytes(ptr, len, max, what)? };
    std::str::from_utf8(b).map_err(|e| {
        Failure::new(
            EW_ERR_UTF8,
            format!("{what} is not UTF-8 (at byte {})", e.valid_up_to()),
        )
    })
}

/// Writes `message` to `*error` as a C string to be freed with [`ew_string_free`].
///
/// # Safety
/// `error` must be null or valid for one pointer write.
pub(super) unsafe fn set_error(error: *mut *mut c_char, message: &str) {
    if error.is_null() {
        return;
    }
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    // SAFETY: checked non-null; the caller vouches for the write.
    unsafe { *error = c.into_raw() };
}
