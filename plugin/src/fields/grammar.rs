//! JSON grammar without a tree: skipping (and validating) whitespace, strings, numbers, literals
//! and whole values. String ends are found either eight bytes at a time ([`Swar`]) or, in the
//! scan, from a bit mask of the whole line's string stops built once per line ([`Indexed`]).

use super::{ScanError, ScanErrorKind, MAX_DEPTH};

/// The eight bytes at `at` as a little-endian word, if there are eight. (`at` is an offset in
/// a line shorter than 4 GiB, so `at + 8` cannot overflow.)
#[inline(always)]
pub(super) fn word(bytes: &[u8], at: usize) -> Option<u64> {
    // Two comparisons (`at` within the slice, eight bytes left), where `at + 8 <= len` needs an
    // overflow check besides.
    let chunk = bytes.get(at..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*chunk))
}

pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
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

/// The position of the first byte at or after `pos` that is not white space, and that byte
/// (0 at the end of the line: no JSON token starts with it, so it fails every check a real
/// byte would). The scan walks from token to token with it: each token's first byte is
/// loaded and bounds-checked once, where skipping white space and then matching on the byte
/// read it twice.
#[inline(always)]
pub(super) fn peek(b: &[u8], pos: usize) -> (usize, u8) {
    match b.get(pos) {
        Some(&c) if c > b' ' => (pos, c),
        _ => peek_run(b, pos),
    }
}

#[inline(never)]
fn peek_run(b: &[u8], pos: usize) -> (usize, u8) {
    let pos = skip_ws_run(b, pos);
    (pos, b.get(pos).copied().unwrap_or(0))
}

#[inline(never)]
fn skip_ws_run(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// How a string's end is found (both check its contents the same way: see [`Strings::end`]).
pub(super) trait Strings: Copy {
    /// Finds the end of a string whose contents start at `pos`, checking them; returns the
    /// position after the closing quote and whether the string had escapes.
    fn end(self, b: &[u8], pos: usize) -> Result<(usize, bool), ScanError>;
}

/// Reads the string itself, eight bytes at a time.
#[derive(Clone, Copy)]
pub(super) struct Swar;

impl Strings for Swar {
    #[inline(always)]
    fn end(self, b: &[u8], pos: usize) -> Result<(usize, bool), ScanError> {
        string_end(b, pos)
    }
}

/// Looks the string's first stop (`"`, `\` or a control character) up in a bit mask of the
/// whole line ([`index_stops`]): a string without escapes ends at that stop, found with a
/// shift and a count of trailing zeros instead of a pass over its bytes. Any other first stop
/// (an escape, a control character, no stop before the line ends) hands the string to
/// [`string_end_checked`] ([`Swar`]'s scan out of line), which checks it and says what is
/// wrong exactly as it does without the mask.
#[derive(Clone, Copy)]
pub(super) struct Indexed<'a>(pub(super) &'a [u64]);

impl Indexed<'_> {
    /// The position after the closing quote of the string whose contents start at `pos`, when
    /// it has no escape and nothing wrong in it; `None` hands it to [`string_end_checked`].
    #[inline(always)]
    pub(super) fn plain_end(self, b: &[u8], pos: usize) -> Option<usize> {
        let mut i = pos / 64;
        // The stops from `pos` on, shifted down to bit 0: a stop in `pos`'s own block (the
        // common case, most strings being short) is `pos` plus its bit's place.
        let here = self.0.get(i)? >> (pos % 64);
        let at = if here != 0 {
            pos + here.trailing_zeros() as usize
        } else {
            loop {
                i += 1;
                let stops = *self.0.get(i)?;
                if stops != 0 {
                    break i * 64 + stops.trailing_zeros() as usize;
                }
            }
        };
        (b.get(at) == Some(&b'"')).then_some(at + 1)
    }
}

impl Strings for Indexed<'_> {
    #[inline(always)]
    fn end(self, b: &[u8], pos: usize) -> Result<(usize, bool), ScanError> {
        match self.plain_end(b, pos) {
            Some(end) => Ok((end, false)),
            None => string_end_checked(b, pos),
        }
    }
}

/// [`string_end`] out of line, for the strings [`Indexed`] hands over (escaped, bad or cut
/// short): kept out of the scan's loop, whose registers it would otherwise take.
#[cold]
#[inline(never)]
pub(super) fn string_end_checked(b: &[u8], pos: usize) -> Result<(usize, bool), ScanError> {
    string_end(b, pos)
}

/// Builds the mask [`Indexed`] reads: bit `i % 64` of word `i / 64` is set when byte `i` of
/// `b` is `"`, `\` or below 0x20. About three quarters of an instruction per byte (SSE2,
/// sixteen bytes per comparison), where finding each string's end eight bytes at a time costs
/// some thirty instructions per string, most strings of an event being shorter than sixteen.
pub(super) fn index_stops(b: &[u8], out: &mut Vec<u64>) {
    out.clear();
    // `extend` over a `TrustedLen` iterator (the exact chunks) reserves once: no capacity
    // test per block.
    let chunks = b.chunks_exact(64);
    let rest = chunks.remainder().len();
    out.extend(chunks.map(|chunk| stops64(chunk.try_into().unwrap_or(&[b' '; 64]))));
    if rest == 0 {
        return;
    }
    // The last 64 bytes of the line, shifted so that only the remainder's bits are left: no
    // copy into a padded block (a `memset` and a `memcpy` per line, more than a block's work).
    if let Some(last) = b.len().checked_sub(64).and_then(|at| b.get(at..)) {
        let last: &[u8; 64] = last.try_into().unwrap_or(&[b' '; 64]);
        out.push(stops64(last) >> (64 - rest));
    } else {
        // A line shorter than a block. Spaces are not stops: no bit is set past the line.
        let mut pad = [b' '; 64];
        pad[..rest].copy_from_slice(b);
        out.push(stops64(&pad));
    }
}

/// The stop bits of 64 bytes, sixteen at a time with SSE2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn stops64(chunk: &[u8; 64]) -> u64 {
    // SAFETY: SSE2 is part of the x86-64 baseline: every x86-64 CPU has it (and every build
    // for this target enables it).
    unsafe { stops64_sse2(chunk) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn stops64_sse2(chunk: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x, _mm_xor_si128,
    };
    let two = _mm_set1_epi8(0x02);
    let backslash = _mm_set1_epi8(b'\\' as i8);
    let space = _mm_set1_epi8(0x20);
    let mut mask = 0;
    for (i, half) in chunk.chunks_exact(16).enumerate() {
        let lo = word(half, 0).unwrap_or(0);
        let hi = word(half, 8).unwrap_or(0);
        let v = _mm_set_epi64x(hi as i64, lo as i64);
        // As in `string_stops`: `"` (0x22) xor 2 is 0x20 and the controls stay below it, so
        // min(v ^ 2, 0x20) == v ^ 2 marks both with one comparison.
        let x = _mm_xor_si128(v, two);
        let stops = _mm_or_si128(
            _mm_cmpeq_epi8(_mm_min_epu8(x, space), x),
            _mm_cmpeq_epi8(v, backslash),
        );
        mask |= u64::from(_mm_movemask_epi8(stops) as u16) << (16 * i);
    }
    mask
}

/// The stop bits of 64 bytes, a byte at a time: on other targets, and the reference the SSE2
/// version is tested against.
#[cfg(any(test, not(target_arch = "x86_64")))]
pub(super) fn stops64_bytes(chunk: &[u8; 64]) -> u64 {
    chunk.iter().enumerate().fold(0, |mask, (i, &c)| {
        mask | (u64::from(c == b'"' || c == b'\\' || c < 0x20) << i)
    })
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn stops64(chunk: &[u8; 64]) -> u64 {
    stops64_bytes(chunk)
}

/// Finds the end of a string whose contents start at `pos`, checking them, eight bytes at a
/// time; returns the position after the closing quote and whether the string had escapes.
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

/// The position after the run of ASCII digits at `pos`: eight bytes at a time
/// ([`non_digits`]), byte by byte in the last seven bytes of the line.
#[inline(always)]
fn digits(b: &[u8], mut pos: usize) -> usize {
    while let Some(w) = word(b, pos) {
        let stops = non_digits(w);
        if stops != 0 {
            return pos + (stops.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while b.get(pos).is_some_and(u8::is_ascii_digit) {
        pos += 1;
    }
    pos
}

/// High bit set in exactly the bytes of `w` that are not ASCII digits. A digit is a byte whose
/// high nibble is 3 and whose low nibble plus 6 stays below 0x10; neither sum carries into the
/// next byte, and the final test of each byte for zero is the exact form (no borrow).
/// `time.rs`'s ECS tail relies on it being exact in every byte, not only up to the first stop.
#[inline(always)]
pub(crate) fn non_digits(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let high = (w & (ONES * 0xf0)) ^ (ONES * 0x30);
    let low = ((w & (ONES * 0x0f)) + ONES * 0x06) & (ONES * 0x10);
    let t = high | low;
    (((t & LOW7) + LOW7) | t) & HIGHS
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
pub(super) fn skip_value<S: Strings>(
    b: &[u8],
    strings: S,
    pos: usize,
    depth: u32,
) -> Result<usize, ScanError> {
    skip_value_at(b, strings, pos, b.get(pos).copied().unwrap_or(0), depth)
}

/// [`skip_value`] of the value at `pos`, whose first byte `c` the caller has read ([`peek`]).
#[inline(always)]
pub(super) fn skip_value_at<S: Strings>(
    b: &[u8],
    strings: S,
    pos: usize,
    c: u8,
    depth: u32,
) -> Result<usize, ScanError> {
    match c {
        b'"' => strings.end(b, pos + 1).map(|(end, _)| end),
        b'-' | b'0'..=b'9' => number_end(b, pos).map(|(end, _)| end),
        b'[' => skip_array(b, strings, pos, depth),
        _ => skip_nested(b, strings, pos, depth),
    }
}

/// Skips the array at `pos` (its `[`) when all its elements are strings, as ECS arrays are
/// (`event.category`, `event.type`, `tags`): string to string, without [`skip_nested`]'s
/// stack of open containers (about 150 instructions for a one-string array, this path some
/// 35). Anything else (another kind of element, bad JSON, the depth limit) is handed to
/// [`skip_nested`] from the `[`, which reads what was read here again the same way: the
/// result and any error are [`skip_nested`]'s own.
#[inline(always)]
pub(super) fn skip_array<S: Strings>(
    b: &[u8],
    strings: S,
    pos: usize,
    depth: u32,
) -> Result<usize, ScanError> {
    if depth < MAX_DEPTH {
        let mut at = pos + 1;
        loop {
            let (p, c) = peek(b, at);
            if c != b'"' {
                break;
            }
            let Ok((end, _)) = strings.end(b, p + 1) else {
                break;
            };
            let (p, c) = peek(b, end);
            match c {
                b',' => at = p + 1,
                b']' => return Ok(p + 1),
                _ => break,
            }
        }
    }
    skip_nested(b, strings, pos, depth)
}

/// [`skip_value`] for any value, containers included, without recursion: open containers are
/// a stack of bits (1 object, 0 array).
pub(super) fn skip_nested<S: Strings>(
    b: &[u8],
    strings: S,
    mut pos: usize,
    depth: u32,
) -> Result<usize, ScanError> {
    let mut stack: u128 = 0;
    let mut open: u32 = 0;
    loop {
        // A value.
        match b.get(pos) {
            Some(b'"') => pos = strings.end(b, pos + 1)?.0,
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
                        pos = member_key(b, strings, pos)?;
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
                        pos = member_key(b, strings, pos)?;
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
fn member_key<S: Strings>(b: &[u8], strings: S, pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) != Some(&b'"') {
        return Err(fail(ScanErrorKind::Syntax, pos));
    }
    let (pos, _) = strings.end(b, pos + 1)?;
    colon(b, pos)
}

/// After a member's value at `pos`: the position of the next member's key (its opening
/// quote) and `false`, or the position after the object's `}` and `true`; anything else (a
/// `,` not followed by a key's quote too) is a syntax error at the first byte that does not
/// fit. The common `,"` is read as one pair of bytes: one bounds check for both.
#[inline(always)]
pub(super) fn after_member(b: &[u8], pos: usize) -> Result<(usize, bool), ScanError> {
    if let Some(&[b',', b'"']) = b.get(pos..).and_then(<[u8]>::first_chunk::<2>) {
        return Ok((pos + 1, false));
    }
    let (at, d) = peek(b, pos);
    match d {
        b',' => {
            let (at, c) = peek(b, at + 1);
            if c != b'"' {
                return Err(fail(ScanErrorKind::Syntax, at));
            }
            Ok((at, false))
        }
        b'}' => Ok((at + 1, true)),
        _ => Err(fail(ScanErrorKind::Syntax, at)),
    }
}

/// [`colon`], and the value's first byte ([`peek`]). The common `":` and a value right after
/// it are read as one pair of bytes: one bounds check for both.
#[inline(always)]
pub(super) fn colon_peek(b: &[u8], pos: usize) -> Result<(usize, u8), ScanError> {
    if let Some(&[b':', v]) = b.get(pos..).and_then(<[u8]>::first_chunk::<2>) {
        if v > b' ' {
            return Ok((pos + 1, v));
        }
    }
    Ok(peek(b, past_colon(b, pos)?))
}

/// At the colon after a key (maybe after whitespace); returns the position of the value.
#[inline(always)]
pub(super) fn colon(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    Ok(skip_ws(b, past_colon(b, pos)?))
}

/// At the colon after a key (maybe after whitespace); returns the position after it.
#[inline(always)]
fn past_colon(b: &[u8], pos: usize) -> Result<usize, ScanError> {
    if b.get(pos) == Some(&b':') {
        return Ok(pos + 1);
    }
    let pos = skip_ws(b, pos);
    if b.get(pos) != Some(&b':') {
        return Err(fail(ScanErrorKind::Syntax, pos));
    }
    Ok(pos + 1)
}
