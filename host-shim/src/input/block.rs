//! [`Block`]: complete lines as a reader hands them to the engine, with what the reader has
//! already found out about them.
//!
//! The engine's thread is the one stage of the pipeline that cannot be spread over cores (it
//! runs the detector's judging, in event order), so whatever can be done before it is done on
//! the reader's thread: where each line ends, and whether the lines are UTF-8. A block that is
//! UTF-8 as a whole is marked so, and the engine hands its lines to the detector as they are,
//! without checking each again. (Cutting UTF-8 text at `\n`, an ASCII byte, gives UTF-8
//! lines.) For a block holding some other bytes the engine checks its lines one by one, as it
//! does lines that came some other way. Its bytes are a [`LineBuf`] (a reader's block may
//! begin a little way into its buffer: `lines.rs`) in an `Arc`: `default`'s batch shares the
//! block when some of its lines do not pass (`output::queue::Segments`).

use std::ops::Deref;
use std::sync::Arc;

use crate::line_buf::LineBuf;

/// Where a line lies in its block, without its terminator; also a run of consecutive lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The lines of a block (each ends in `\n`, except perhaps the last).
pub(crate) fn line_spans(block: &[u8]) -> Vec<Span> {
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let mut spans = Vec::with_capacity(body.len() / 256 + 1);
    let mut start = 0;
    for_each_newline(body, |nl| {
        spans.push(Span { start, end: nl });
        start = nl + 1;
    });
    spans.push(Span {
        start,
        end: body.len(),
    });
    spans
}

/// Calls `found` with the index of each `\n` in `bytes`, in order.
///
/// With AVX2, 128 bytes a step are compared at once, the step's newlines read as the set bits
/// of bit masks when it holds any: one pass over the block. memchr (elsewhere, and for the
/// last bytes) is called once per line, and each call sets its search up again
/// (ARCHITECTURE.md, host: `line_spans`).
fn for_each_newline(bytes: &[u8], mut found: impl FnMut(usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        let done = unsafe { newlines_avx2(bytes, &mut found) };
        for nl in memchr::memchr_iter(b'\n', &bytes[done..]) {
            found(done + nl);
        }
        return;
    }
    for nl in memchr::memchr_iter(b'\n', bytes) {
        found(nl);
    }
}

/// [`for_each_newline`] over the whole 128-byte steps of `bytes`; returns where they end (the
/// rest, under 128 bytes, is the caller's).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn newlines_avx2(bytes: &[u8], found: &mut impl FnMut(usize)) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8, _mm256_testz_si256,
    };
    const STEP: usize = 128;
    let newline = _mm256_set1_epi8(b'\n' as i8);
    let mut at = 0;
    for step in bytes.chunks_exact(STEP) {
        let ptr = step.as_ptr().cast::<__m256i>();
        // SAFETY: `step` is 128 bytes long: the four 32-byte loads lie in it (unaligned loads).
        let quarters = unsafe { [0, 1, 2, 3].map(|i| _mm256_loadu_si256(ptr.add(i))) };
        let hits = quarters.map(|q| _mm256_cmpeq_epi8(q, newline));
        let any = _mm256_or_si256(
            _mm256_or_si256(hits[0], hits[1]),
            _mm256_or_si256(hits[2], hits[3]),
        );
        if _mm256_testz_si256(any, any) == 0 {
            for (quarter, hit) in hits.into_iter().enumerate() {
                // (movemask gives the 32 byte comparisons as the bits of an i32.)
                let mut mask = _mm256_movemask_epi8(hit) as u32;
                while mask != 0 {
                    found(at + 32 * quarter + mask.trailing_zeros() as usize);
                    mask &= mask - 1;
                }
            }
        }
        at += STEP;
    }
    at
}

/// Whether `bytes` were seen to be all ASCII (so UTF-8, unchecked further): with AVX2, 128
/// bytes OR-ed a step and their high bits looked at once at the end: about a third of
/// simdutf8's instructions for an ASCII block (0.29M against 0.80M Ir for the sample: it saves
/// two thirds), and that third more for another; without AVX2 `false`, and simdutf8 decides.
fn all_ascii(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        return unsafe { all_ascii_avx2(bytes) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
    false
}

/// [`all_ascii`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn all_ascii_avx2(bytes: &[u8]) -> bool {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_setzero_si256,
    };
    let steps = bytes.chunks_exact(128);
    let rest = steps.remainder();
    let mut high = _mm256_setzero_si256();
    for step in steps {
        let ptr = step.as_ptr().cast::<__m256i>();
        // SAFETY: `step` is 128 bytes long: the four 32-byte loads lie in it (unaligned loads).
        let [a, b, c, d] = unsafe { [0, 1, 2, 3].map(|i| _mm256_loadu_si256(ptr.add(i))) };
        high = _mm256_or_si256(
            high,
            _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d)),
        );
    }
    _mm256_movemask_epi8(high) == 0 && rest.is_ascii()
}

/// Complete lines, each ending in `\n` except possibly the last one at EOF, with their spans
/// and, when they are UTF-8, as text (see the module documentation).
#[derive(Debug)]
pub(crate) struct Block {
    /// Shared: an output's batch may keep the runs of lines that pass without copying them.
    data: Arc<LineBuf>,
    /// The lines are UTF-8.
    utf8: bool,
    spans: Vec<Span>,
}

impl Block {
    /// The lines `data` holds: cut and checked here, on the caller's thread.
    pub(crate) fn new(data: impl Into<LineBuf>) -> Block {
        let data = Arc::new(data.into());
        let spans = line_spans(&data);
        // An all-ASCII block (`all_ascii`) is not checked further. Otherwise simdutf8 checks
        // 64 bytes a step where the standard library checks 16: about a third of the
        // instructions (ARCHITECTURE.md, host).
        let utf8 = all_ascii(&data) || simdutf8::basic::from_utf8(&data).is_ok();
        Block { data, utf8, spans }
    }

    /// The block as text, when it is UTF-8.
    pub(crate) fn text(&self) -> Option<&str> {
        // SAFETY: `utf8` says these very bytes were found UTF-8 when the block was made (all
        // ASCII, or simdutf8's check), and a block's bytes are never changed.
        self.utf8
            .then(|| unsafe { std::str::from_utf8_unchecked(&self.data) })
    }

    /// Where its lines lie.
    pub(crate) fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Its bytes, shared.
    pub(crate) fn shared(&self) -> &Arc<LineBuf> {
        &self.data
    }

    /// Its bytes, given back where they lie; copied when they are still shared (defensive: the
    /// engine takes them back only when no batch shares them, and its tests check that the
    /// batch is then the block itself).
    pub(crate) fn into_buf(self) -> LineBuf {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }
}

impl Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_into_the_lines_a_slice_split_finds() {
        for block in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"a\n\nb\n",
            b"\n\n",
            b"a\r\nb\r\n",
        ] {
            let trimmed = block.strip_suffix(b"\n").unwrap_or(block);
            let expected: Vec<&[u8]> = trimmed.split(|&b| b == b'\n').collect();
            let found: Vec<&[u8]> = line_spans(block)
                .iter()
                .map(|s| &block[s.start..s.end])
                .collect();
            assert_eq!(found, expected, "{:?}", String::from_utf8_lossy(block));
        }
    }

    /// Pseudo-random numbers from `seed` (xorshift: the same every run).
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    #[test]
    fn long_blocks_split_into_the_lines_a_slice_split_finds() {
        // Pseudo-random bytes, newlines from every byte to one in 500, in blocks of every
        // length up to 300 (the 128-byte steps, and what is left after them) and a few long.
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let lengths = (0..300).chain([1000, 4096, 65_537]);
        for (len, one_in) in lengths.flat_map(|len| [1, 2, 40, 500].map(|n| (len, n))) {
            let block: Vec<u8> = (0..len)
                .map(|_| match next() % one_in {
                    0 => b'\n',
                    r => b'a' + (r % 26) as u8,
                })
                .collect();
            let trimmed = block.strip_suffix(b"\n").unwrap_or(&block);
            let expected: Vec<&[u8]> = trimmed.split(|&b| b == b'\n').collect();
            let found: Vec<&[u8]> = line_spans(&block)
                .iter()
                .map(|s| &block[s.start..s.end])
                .collect();
            assert_eq!(found, expected, "{len} bytes, a newline in {one_in}");
        }
    }

    #[test]
    fn newlines_are_found_where_memchr_finds_them_among_any_bytes_from_any_start() {
        // Bytes of every value (those a bit or the sign away from `\n` among them), newlines
        // added at every byte to one in 500; every start in the first 32 bytes of the buffer.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let lengths = (0..300).chain([1000, 4096]);
        for (len, one_in) in lengths.flat_map(|len| [1, 3, 40, 500].map(|n| (len, n))) {
            let buf: Vec<u8> = (0..len + 32)
                .map(|_| match next() % one_in {
                    0 => b'\n',
                    _ => (next() >> 24) as u8,
                })
                .collect();
            for start in 0..32 {
                let bytes = &buf[start..];
                let mut found = Vec::new();
                for_each_newline(bytes, |nl| found.push(nl));
                let expected: Vec<usize> = memchr::memchr_iter(b'\n', bytes).collect();
                assert_eq!(found, expected, "{len} bytes from {start}, one in {one_in}");
            }
        }
    }

    #[test]
    fn a_block_is_seen_all_ascii_only_when_every_byte_is() {
        // Every length to 300 (under a 128-byte step, whole steps with nothing after them,
        // steps and a rest) and 1024; the empty block too. (Without AVX2 it is never seen: the
        // `Block::new` test below checks the result through simdutf8 then.)
        #[cfg(target_arch = "x86_64")]
        let looked = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let looked = false;
        for len in (0..=300).chain([1024]) {
            let ascii: Vec<u8> = (0..len).map(|i| b"abc\n"[i % 4]).collect();
            assert_eq!(all_ascii(&ascii), looked, "{len} bytes");
            for at in 0..len {
                let mut block = ascii.clone();
                block[at] |= 0x80;
                assert!(!all_ascii(&block), "a high bit at {at} of {len}");
            }
        }
    }

    #[test]
    fn a_block_is_text_exactly_when_the_standard_library_finds_it_utf8() {
        // Three lines of 100 bytes with characters of 2, 3 and 4 bytes, and three of ASCII (the
        // path that skips the check when no byte has its high bit); a sequence is put at every
        // place of them in turn (in the check's 64-byte steps and in the tail after them).
        let line = format!("{}é€😀{}\n", "x".repeat(40), "y".repeat(49));
        let ascii = format!("{}\n", "x".repeat(99));
        // Good characters, then bad sequences: a byte never in UTF-8, truncated 2-, 3- and
        // 4-byte characters, overlong 2-, 3- and 4-byte ones, a surrogate, past U+10FFFF (by
        // value and by lead byte), a lone continuation byte.
        let inserted: [&[u8]; 12] = [
            "é€😀".as_bytes(),
            b"\xff",
            b"\xc3",
            b"\xe2\x82",
            b"\xf0\x9f\x98",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\x80",
            b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80",
            b"\x80",
        ];
        for base in [line.repeat(3).into_bytes(), ascii.repeat(3).into_bytes()] {
            let mut text = 0;
            for at in 0..=base.len() {
                for bytes in inserted {
                    let mut data = base.clone();
                    data.splice(at..at, bytes.iter().copied());
                    let utf8 = std::str::from_utf8(&data).is_ok();
                    text += usize::from(utf8);
                    let block = Block::new(data.clone());
                    assert_eq!(block.text().is_some(), utf8, "{bytes:?} at {at}");
                    assert_eq!(block.into_buf(), data);
                }
            }
            assert!(text > base.len() / 2, "valid insertions were tried: {text}");
        }
    }

    #[test]
    fn a_block_is_text_only_when_every_line_is_utf8() {
        let block = Block::new("{\"a\":\"é\"}\n{\"b\":1}\n".as_bytes().to_vec());
        assert_eq!(block.text(), Some("{\"a\":\"é\"}\n{\"b\":1}\n"));
        assert_eq!(
            block.spans(),
            &[Span { start: 0, end: 10 }, Span { start: 11, end: 18 }]
        );
        let bytes = b"{\"a\":1}\n{\"b\":\"\xff\"}\n".to_vec();
        let block = Block::new(bytes.clone());
        assert_eq!(block.text(), None);
        assert_eq!(&*block, &bytes[..]);
        assert_eq!(block.spans().len(), 2);
        assert_eq!(block.into_buf(), bytes);
    }
}
