//! [`LineBuf`]: bytes of lines in a `Vec` that may begin some way into it.
//!
//! A reader reads standard input straight into the block it hands over, at a page boundary
//! (the kernel's copy is several times slower a few bytes past one: `input/lines.rs`), after
//! the unfinished line the read before left. Where that line begins depends on its length, so
//! a block begins somewhere in the first page of its buffer, and so does an output batch that
//! is such a block taken whole. The bytes before the start are never read again.
//!
//! Written here rather than taken from the `bytes` crate, already in the tree: `BytesMut` can
//! take a `Vec` without copying it (through `Bytes`, when unique), but has no way to give back
//! spare room in place (`shrink_to_fit`), which a reader's block from a short read needs.

use std::ops::Deref;

/// The largest spare room a buffer handed on as it is may keep, whatever its bytes (a batch as
/// large as a pipe's read): [`LineBuf::keeps_whole`].
pub(crate) const KEEP_WHOLE: usize = 64 * 1024;

/// Bytes `vec[start..]`, growable at the end.
#[derive(Debug, Default, Clone)]
pub(crate) struct LineBuf {
    vec: Vec<u8>,
    start: usize,
}

impl LineBuf {
    /// The bytes of `vec` from `start` on.
    ///
    /// # Panics
    /// When `start` is past the end of `vec`.
    pub(crate) fn at(vec: Vec<u8>, start: usize) -> Self {
        assert!(start <= vec.len(), "a start past the end");
        LineBuf { vec, start }
    }

    /// Bytes of memory it holds, the bytes before its start included.
    pub(crate) fn capacity(&self) -> usize {
        self.vec.capacity()
    }

    /// Whether it may be handed on as it is (by a reader to the engine, by the engine to an
    /// output's queue): its capacity is at most twice its bytes, or [`KEEP_WHOLE`]. The queue
    /// bounds the bytes of its batches, not their capacity, so a buffer far larger than its
    /// lines gives the rest back first, or is copied.
    pub(crate) fn keeps_whole(&self) -> bool {
        self.capacity() <= (2 * self.len()).max(KEEP_WHOLE)
    }

    /// The whole buffer, the bytes before its start included, for a caller that fills its
    /// spare room itself; it must not shorten it past the start.
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.vec.extend_from_slice(bytes);
    }

    pub(crate) fn push(&mut self, byte: u8) {
        self.vec.push(byte);
    }

    /// Makes room for `bytes` more at the end.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.vec.reserve(bytes);
    }

    /// Keeps the first `len` bytes.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.vec.truncate(self.start + len);
    }

    /// Gives back the room past its end (in place, as a shrinking `realloc` does); the bytes
    /// before its start stay: less than a page when a reader made them, the lines already
    /// written when a reload handed a batch over part-written (`advance`), which is rare and
    /// never more than the batch was.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.vec.shrink_to_fit();
    }

    /// Drops its first `bytes` bytes, without moving the rest.
    pub(crate) fn advance(&mut self, bytes: usize) {
        assert!(bytes <= self.len(), "advanced past the end");
        self.start += bytes;
    }

    /// Its bytes as a `Vec` of their own: moved to the front when they do not begin there.
    pub(crate) fn into_vec(mut self) -> Vec<u8> {
        self.vec.drain(..self.start);
        self.vec
    }
}

impl From<Vec<u8>> for LineBuf {
    fn from(vec: Vec<u8>) -> Self {
        LineBuf { vec, start: 0 }
    }
}

impl Deref for LineBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.vec[self.start..]
    }
}

/// Equal when the bytes are, wherever they begin.
impl PartialEq for LineBuf {
    fn eq(&self, other: &LineBuf) -> bool {
        **self == **other
    }
}

impl Eq for LineBuf {}

/// For the tests' comparisons with the bytes they expect.
#[cfg(test)]
impl PartialEq<Vec<u8>> for LineBuf {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_bytes_are_those_from_its_start_on_whatever_is_done_to_them() {
        let mut buf = LineBuf::at(b"xxxxab".to_vec(), 4);
        assert_eq!(&*buf, b"ab");
        buf.extend_from_slice(b"cd");
        buf.push(b'\n');
        assert_eq!(&*buf, b"abcd\n");
        buf.truncate(3);
        assert_eq!(&*buf, b"abc");
        buf.advance(1);
        assert_eq!(buf, b"bc".to_vec());
        assert_eq!(buf, LineBuf::from(b"bc".to_vec()));
        buf.shrink_to_fit();
        assert_eq!(
            (&*buf, buf.capacity()),
            (&b"bc"[..], 7),
            "the front is kept"
        );
        assert_eq!(buf.into_vec(), b"bc".to_vec());
    }

    #[test]
    #[should_panic(expected = "a start past the end")]
    fn a_start_past_the_end_is_refused() {
        let _ = LineBuf::at(vec![1, 2], 3);
    }

    #[test]
    #[should_panic(expected = "advanced past the end")]
    fn advancing_past_the_end_is_refused() {
        LineBuf::at(vec![1, 2, 3], 1).advance(3);
    }
}
