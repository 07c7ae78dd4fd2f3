//! The hand-written JSON writer of events and labels: digits and addresses appended to a line
//! buffer without a formatter, since a long run writes millions of lines.

use super::AttackKind;

/// Appends a label line.
pub(super) fn write_label(buf: &mut Vec<u8>, line: u64, ts: &str, kind: AttackKind, ip: u32) {
    buf.extend_from_slice(b"{\"line\":");
    push_u64(buf, line);
    buf.extend_from_slice(b",\"@timestamp\":\"");
    buf.extend_from_slice(ts.as_bytes());
    buf.extend_from_slice(b"\",\"attack\":\"");
    buf.extend_from_slice(kind.name().as_bytes());
    buf.extend_from_slice(b"\",\"destination.ip\":\"");
    push_ip(buf, ip);
    buf.extend_from_slice(b"\"}\n");
}

/// Appends a decimal number.
pub(super) fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends a dotted-quad IPv4 address.
pub(super) fn push_ip(buf: &mut Vec<u8>, ip: u32) {
    for (k, octet) in ip.to_be_bytes().into_iter().enumerate() {
        if k > 0 {
            buf.push(b'.');
        }
        push_u64(buf, u64::from(octet));
    }
}

// ---------------------------------------------------------------------------------------------
// Attacks
