//! [`Block`]: complete lines as a reader hands them to the engine, with what the reader has
//! already found out about them.
//!
//! The engine's thread is the one stage of the pipeline that cannot be spread over cores (it
//! runs the detector's judging, in event order), so whatever can be done before it is done on
//! the reader's thread: where each line ends, and whether the lines are UTF-8. A block that is
//! UTF-8 as a whole is kept as a `String`, and the engine hands its lines to the detector as
//! they are, without checking each again. (Cutting UTF-8 text at `\n`, an ASCII byte, gives
//! UTF-8 lines.) A block holding some other bytes is kept as bytes, and the engine checks its
//! lines one by one, as it does lines that came some other way.

use std::ops::Deref;

/// Where a line lies in its block, without its terminator; also a run of consecutive lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The lines of a block (each ends in `\n`, except perhaps the last), found with memchr.
pub(crate) fn line_spans(block: &[u8]) -> Vec<Span> {
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let mut spans = Vec::with_capacity(body.len() / 256 + 1);
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', body) {
        spans.push(Span { start, end: nl });
        start = nl + 1;
    }
    spans.push(Span {
        start,
        end: body.len(),
    });
    spans
}

/// Complete lines, each ending in `\n` except possibly the last one at EOF, with their spans
/// and, when they are UTF-8, as text (see the module documentation).
#[derive(Debug)]
pub(crate) struct Block {
    data: Data,
    spans: Vec<Span>,
}

#[derive(Debug)]
enum Data {
    /// The block is UTF-8.
    Text(String),
    /// The block holds bytes that are not UTF-8 (in some of its lines).
    Bytes(Vec<u8>),
}

impl Block {
    /// The lines `data` holds: cut and checked here, on the caller's thread.
    pub(crate) fn new(data: Vec<u8>) -> Block {
        let spans = line_spans(&data);
        // simdutf8 checks 64 bytes a step where the standard library checks 16: about a third
        // of the instructions (ARCHITECTURE.md, host).
        let data = if simdutf8::basic::from_utf8(&data).is_ok() {
            // SAFETY: simdutf8 has just found these very bytes to be UTF-8.
            Data::Text(unsafe { String::from_utf8_unchecked(data) })
        } else {
            Data::Bytes(data)
        };
        Block { data, spans }
    }

    /// The block as text, when it is UTF-8.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.data {
            Data::Text(text) => Some(text),
            Data::Bytes(_) => None,
        }
    }

    /// Where its lines lie.
    pub(crate) fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Its bytes, given back.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self.data {
            Data::Text(text) => text.into_bytes(),
            Data::Bytes(bytes) => bytes,
        }
    }
}

impl Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.data {
            Data::Text(text) => text.as_bytes(),
            Data::Bytes(bytes) => bytes,
        }
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

    #[test]
    fn a_block_is_text_exactly_when_the_standard_library_finds_it_utf8() {
        // Three lines of 100 bytes with characters of 2, 3 and 4 bytes; a sequence is put at
        // every place of it in turn (in the check's 64-byte steps and in the tail after them).
        let line = format!("{}é€😀{}\n", "x".repeat(40), "y".repeat(49));
        let base = line.repeat(3).into_bytes();
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
        let mut text = 0;
        for at in 0..=base.len() {
            for bytes in inserted {
                let mut data = base.clone();
                data.splice(at..at, bytes.iter().copied());
                let utf8 = std::str::from_utf8(&data).is_ok();
                text += usize::from(utf8);
                let block = Block::new(data.clone());
                assert_eq!(block.text().is_some(), utf8, "{bytes:?} at {at}");
                assert_eq!(block.into_bytes(), data);
            }
        }
        assert!(text > base.len() / 2, "valid insertions were tried: {text}");
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
        assert_eq!(block.into_bytes(), bytes);
    }
}
