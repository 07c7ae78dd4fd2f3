//! JSON grammar without a tree: skipping (and validating) whitespace, strings, numbers, literals
//! and whole values, strings eight bytes at a time (SWAR).

use super::{ScanError, ScanErrorKind, MAX_DEPTH};

/// The eight bytes at `at` as a little-endian word, if there are eight. (`at` is an offset in
/// a line shorter than 4 GiB, so `at + 8` cannot overflow.)
#[inline(always)]
pub(super) fn word(bytes: &[u8], at: usize) -> Option<u64> {
    if at + 8 > bytes.len() {
        return None;
    }
    let chunk: &[u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(*chunk))
}

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero (exact for the lowest such byte; bytes above
/// it may be marked falsely, which is harmless since only the lowest is used).
#[inline(always)]
pub(super) fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// High bit set in each byte of `x` below `n` (`n` at most 0x80; exact for the lowest such
/// byte, like [`zero_bytes`]).
#[inline(always)]
fn bytes_below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// Marks the bytes of a string's contents the scanner must stop at: `"`, `\`, controls.
/// `"` (0x22) xor 2 is 0x20 and the controls (below 0x20) stay below it, so one comparison
/// finds both.
#[inline(always)]
pub(super) fn string_stops(w: u64) -> u64 {
    bytes_below(w ^ (ONES * 0x02), 0x21) | zero_bytes(w ^ (ONES * u64::from(b'\\')))
}

#[cold]
pub(super) fn fail(kind: ScanErrorKind, offset: usize) -> ScanError {
    ScanError { kind, offset }
}

#[inline(always)]
pub(super) fn skip_ws(b: &[u8], pos: usize) -> usize {
    // Shippers write JSON without white space between tokens: one comparison in the common
    // case (every JSON white space byte is at most a space, every token byte is above it).
    match b.get(pos) {
        Some(&c) if c > b' ' => pos,
        _ => skip_ws_run(b, pos),
    }
}

#[inline(never)]
fn skip_ws_run(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// Finds the end of a string whose contents start at `pos`, checking them; returns the
/// position after the closing quote and whether the string had escapes.
#[inline(always)]
pub(super) fn string_end(b: &[u8], mut pos: usize) -> Result<(usize, bool), ScanError> {
    let mut escaped = false;
    loop {
        if let Some(w) = word(b, pos) {
            let stops = string_stops(w);
            if stops == 0 {
                pos += 8;
                continue;
            }
            let at = stops.trailing_zeros() / 8;
            pos += at as usize;
            // The closing quote, the common stop, read from the word already loaded.
            if (w >> (at * 8)) as u8 == b'"' {
                return Ok((pos + 1, escaped));
            }
        }
        match b.get(pos) {
            Some(b'"') => return Ok((pos + 1, escaped)),
            Some(b'\\') => {
                pos = escape(b, pos)?;
                escaped = true;
            }
            Some(&c) if c >= 0x20 => pos += 1,
            Some(_) => return Err(fail(ScanErrorKind::ControlCharacter, pos)),
            None => return Err(fail(ScanErrorKind::Syntax, pos)),
        }
    }
}

/// Checks the escape at `pos` (a backslash); returns the position after it.
fn escape(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    match b.get(pos + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(pos + 2),
        Some(b'u')
            if b.get(pos + 2..pos + 6)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
        {
            Ok(pos + 6)
        }
        _ => Err(fail(ScanErrorKind::BadEscape, pos)),
    }
}

#[inline(always)]
fn digits(b: &[u8], mut pos: usize) -> usize {
    while b.get(pos).is_some_and(u8::is_ascii_digit) {
        pos += 1;
    }
    pos
}

/// Checks a number starting at `pos`; returns the position after it and whether it is an
/// integer (no fraction, no exponent).
#[inline(always)]
pub(super) fn number_end(b: &[u8], mut pos: usize) -> Result<(usize, bool), ScanError> {
    if b.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match b.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => pos = digits(b, pos + 1),
        _ => return Err(fail(ScanErrorKind::BadNumber, pos)),
    }
    match b.get(pos) {
        Some(b'.' | b'e' | b'E') => number_tail(b, pos).map(|end| (end, false)),
        _ => Ok((pos, true)),
    }
}

/// The fraction and exponent of a number, from `pos` (at `.`, `e` or `E`).
fn number_tail(b: &[u8], mut pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) == Some(&b'.') {
        if !b.get(pos + 1).is_some_and(u8::is_ascii_digit) {
            return Err(fail(ScanErrorKind::BadNumber, pos));
        }
        pos = digits(b, pos + 1);
    }
    if matches!(b.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(b.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        if !b.get(pos).is_some_and(u8::is_ascii_digit) {
            return Err(fail(ScanErrorKind::BadNumber, pos));
        }
        pos = digits(b, pos);
    }
    Ok(pos)
}

/// Checks `text` (`true`, `false` or `null`) at `pos`; returns the position after it.
#[inline(always)]
pub(super) fn literal(b: &[u8], pos: usize, text: &[u8]) -> Result<usize, ScanError> {
    if b.get(pos..pos + text.len()) == Some(text) {
        Ok(pos + text.len())
    } else {
        Err(fail(ScanErrorKind::Syntax, pos))
    }
}

/// Skips one value of any kind at `pos`, checking its grammar; `depth` containers are open
/// around it. Strings and numbers, the common case, are handled inline.
#[inline(always)]
pub(super) fn skip_value(b: &[u8], pos: usize, depth: u32) -> Result<usize, ScanError> {
    match b.get(pos) {
        Some(b'"') => string_end(b, pos + 1).map(|(end, _)| end),
        Some(b'-' | b'0'..=b'9') => number_end(b, pos).map(|(end, _)| end),
        _ => skip_nested(b, pos, depth),
    }
}

/// [`skip_value`] for any value, containers included, without recursion: open containers are
/// a stack of bits (1 object, 0 array).
pub(super) fn skip_nested(b: &[u8], mut pos: usize, depth: u32) -> Result<usize, ScanError> {
    let mut stack: u128 = 0;
    let mut open: u32 = 0;
    loop {
        // A value.
        match b.get(pos) {
            Some(b'"') => pos = string_end(b, pos + 1)?.0,
            Some(b'-' | b'0'..=b'9') => pos = number_end(b, pos)?.0,
            Some(&c @ (b'{' | b'[')) => {
                if depth + open >= MAX_DEPTH {
                    return Err(fail(ScanErrorKind::TooDeep, pos));
                }
                pos = skip_ws(b, pos + 1);
                let object = c == b'{';
                let close = if object { b'}' } else { b']' };
                if b.get(pos) == Some(&close) {
                    pos += 1;
                } else {
                    open += 1;
                    stack = (stack << 1) | u128::from(object);
                    if object {
                        pos = member_key(b, pos)?;
                    }
                    continue;
                }
            }
            Some(b't') => pos = literal(b, pos, b"true")?,
            Some(b'f') => pos = literal(b, pos, b"false")?,
            Some(b'n') => pos = literal(b, pos, b"null")?,
            _ => return Err(fail(ScanErrorKind::Syntax, pos)),
        }
        // After a value: the next member or element, or closing brackets.
        loop {
            if open == 0 {
                return Ok(pos);
            }
            pos = skip_ws(b, pos);
            let in_object = stack & 1 == 1;
            match b.get(pos) {
                Some(b',') => {
                    pos = skip_ws(b, pos + 1);
                    if in_object {
                        pos = member_key(b, pos)?;
                    }
                    break;
                }
                Some(b'}') if in_object => {}
                Some(b']') if !in_object => {}
                _ => return Err(fail(ScanErrorKind::Syntax, pos)),
            }
            pos += 1;
            open -= 1;
            stack >>= 1;
        }
    }
}

/// In a skipped object, at a key: the key, the colon and the whitespace before the value.
#[inline(always)]
fn member_key(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) != Some(&b'"') {
        return Err(fail(ScanErrorKind::Syntax, pos));
    }
    let (pos, _) = string_end(b, pos + 1)?;
    colon(b, pos)
}

/// At the colon after a key (maybe after whitespace); returns the position of the value.
#[inline(always)]
pub(super) fn colon(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    let pos = if b.get(pos) == Some(&b':') {
        pos + 1
    } else {
        let pos = skip_ws(b, pos);
        if b.get(pos) != Some(&b':') {
            return Err(fail(ScanErrorKind::Syntax, pos));
        }
        pos + 1
    };
    Ok(skip_ws(b, pos))
}
