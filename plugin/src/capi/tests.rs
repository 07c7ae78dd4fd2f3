use super::inner::detector_json;
use super::record::{write_number, write_string};
use super::*;

fn handle() -> *mut EwDetector {
    let config = format!(
        "rules: [{}/../rules]\ngeoip: off\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let d = unsafe {
        ew_new(
            config.as_ptr().cast(),
            config.len(),
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
        )
    };
    assert!(!d.is_null());
    d
}

#[test]
fn a_panic_inside_the_detector_is_an_error_return_and_the_handle_goes_on() {
    let d = handle();
    let n = unsafe { ew_field_count(d) };
    let values = vec![
        EwValue {
            kind: EW_ABSENT,
            count: 0,
            str: std::ptr::null(),
            len: 0,
            num: 0.0,
        };
        n
    ];
    let mut out = EwVerdict::PASS;
    unsafe { (*d).inner.lock().unwrap().panic_next = true };
    let rc = unsafe { ew_evaluate(d, values.as_ptr(), n, 0, &mut out) };
    assert_eq!(rc, EW_ERR_PANIC);
    let message = unsafe { std::ffi::CStr::from_ptr(ew_last_error(d)) };
    assert!(
        message
            .to_string_lossy()
            .contains("panicked while evaluating an event: test hook"),
        "{message:?}"
    );
    assert_eq!(out.flagged, 0);
    // The lock the panic poisoned is taken back: the next call works.
    let rc = unsafe { ew_evaluate(d, values.as_ptr(), n, 0, &mut out) };
    assert_eq!(rc, EW_OK);
    unsafe { ew_free(d) };
}

#[test]
fn json_and_yaml_and_a_whole_configuration_give_the_same_detector_section() {
    let yaml = detector_json("rules: [r]\ngeoip: off\n").unwrap();
    let json = detector_json(r#"{"rules": ["r"], "geoip": "off"}"#).unwrap();
    let whole = detector_json("outputs: {}\ndetector:\n  rules: [r]\n  geoip: off\n").unwrap();
    assert_eq!(yaml, json);
    assert_eq!(yaml, whole);
    assert_eq!(detector_json("").unwrap(), "{}");
    assert_eq!(detector_json("[1").unwrap_err().code, EW_ERR_CONFIG);
}

#[test]
fn values_are_written_as_the_json_the_detector_reads() {
    let mut s = String::new();
    for n in [443.0, -1.0, 1.5, 1e300, f64::NAN] {
        write_number(&mut s, n);
        s.push(' ');
    }
    write_string(&mut s, "a\"b\\c\u{1}é");
    assert_eq!(s, "443 -1 1.5 1e+300 null \"a\\\"b\\\\c\\u0001é\"");
}
