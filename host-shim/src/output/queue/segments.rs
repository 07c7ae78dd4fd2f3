//! [`Segments`]: the bytes of an output's batch, in one buffer or in pieces of several.
//!
//! A batch is usually one buffer: the lines the engine copied into it, or a reader's block
//! taken whole. A block holding flagged events is not copied either: the runs of its lines
//! that pass unchanged stay in the block (shared, an [`Arc`]), and the batch lists them, in
//! order, with the lines written between them (the annotated replacements), which are in the
//! batch's own buffer. A file or standard output writes the pieces with `writev` (one, unless a
//! write comes back short). The copy the engine used to make is made later for the rest: by a
//! disk buffer's append, which writes them together into its record
//! ([`Segments::contiguous`]), and by the delivery thread of a sink that sends one buffer
//! (sockets, HTTP), which joins them once before its first attempt ([`Segments::join`]), the
//! block let go then.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use crate::line_buf::{LineBuf, KEEP_WHOLE};

/// Bytes of whole lines: `own`'s alone, or the `pieces` in order.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    /// Bytes written into the batch itself. All of them belong to the batch.
    own: LineBuf,
    /// Every byte in order, when some lie in shared blocks (`own`'s bytes among them, in the
    /// order they were written); empty when the batch is `own` alone.
    pieces: Vec<Piece>,
    /// Bytes in shared blocks.
    shared: usize,
}

/// Consecutive bytes of a batch: `range` of a shared block, or of the batch's own buffer.
struct Piece {
    block: Option<Arc<LineBuf>>,
    range: Range<usize>,
}

/// The range and which buffer, not the bytes (a block is a quarter of a megabyte).
impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let block = self.block.as_ref().map(|b| (Arc::as_ptr(b), b.len()));
        f.debug_struct("Piece")
            .field("block", &block)
            .field("range", &self.range)
            .finish()
    }
}

impl Segments {
    pub(crate) fn len(&self) -> usize {
        self.own.len() + self.shared
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the batch's own buffer holds.
    pub(crate) fn own_capacity(&self) -> usize {
        self.own.capacity()
    }

    /// Bytes of memory it holds: its own buffer's and each shared block's (once each).
    pub(crate) fn capacity(&self) -> usize {
        let mut seen: Vec<&Arc<LineBuf>> = Vec::new();
        let mut capacity = self.own.capacity();
        for block in self.pieces.iter().filter_map(|p| p.block.as_ref()) {
            if !seen.iter().any(|b| Arc::ptr_eq(b, block)) {
                seen.push(block);
                capacity += block.capacity();
            }
        }
        capacity
    }

    /// Whether it may be handed to a queue as it is: [`LineBuf::keeps_whole`]'s rule, over all
    /// the memory it holds.
    pub(crate) fn keeps_whole(&self) -> bool {
        self.capacity() <= (2 * self.len()).max(KEEP_WHOLE)
    }

    /// Makes the memory it holds fit the rule of [`Segments::keeps_whole`]: its own buffer gives
    /// back its spare room; if shared blocks still hold far more than it uses of them (most of
    /// their lines went elsewhere), its bytes are copied into one buffer of their own.
    pub(crate) fn fit(&mut self) {
        self.own.shrink_to_fit();
        if !self.keeps_whole() {
            self.join();
        }
    }

    /// Puts its bytes in one buffer of their own when they are in pieces (a copy), letting the
    /// shared blocks go.
    pub(crate) fn join(&mut self) {
        if !self.pieces.is_empty() {
            *self = Segments::from(std::mem::take(self).flatten());
        }
    }

    /// Makes room for `bytes` more in its own buffer.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.own.reserve(bytes);
    }

    pub(crate) fn extend_from_slice(&mut self, bytes: &[u8]) {
        let start = self.own.len();
        self.own.extend_from_slice(bytes);
        self.own_piece(start);
    }

    pub(crate) fn push(&mut self, byte: u8) {
        let start = self.own.len();
        self.own.push(byte);
        self.own_piece(start);
    }

    /// Lists the bytes written to its own buffer from `start` on as the next piece, when the
    /// batch is in pieces.
    fn own_piece(&mut self, start: usize) {
        if self.pieces.is_empty() {
            return;
        }
        let end = self.own.len();
        match self.pieces.last_mut() {
            Some(Piece { block: None, range }) if range.end == start => range.end = end,
            _ => self.pieces.push(Piece {
                block: None,
                range: start..end,
            }),
        }
    }

    /// Appends `range` of `block` (whole lines) without copying it: the batch keeps the block.
    /// (Two runs of one block always have a line written between them: each is a piece.)
    pub(crate) fn push_shared(&mut self, block: &Arc<LineBuf>, range: Range<usize>) {
        assert!(range.end <= block.len(), "a range past the block's end");
        if range.is_empty() {
            return;
        }
        if self.pieces.is_empty() && !self.own.is_empty() {
            self.pieces.push(Piece {
                block: None,
                range: 0..self.own.len(),
            });
        }
        self.shared += range.len();
        self.pieces.push(Piece {
            block: Some(Arc::clone(block)),
            range,
        });
    }

    /// Its bytes, piece by piece, in order.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let whole = self.pieces.is_empty().then_some(&*self.own);
        whole.into_iter().chain(self.pieces.iter().map(|p| {
            let bytes: &[u8] = match &p.block {
                Some(block) => block,
                None => &self.own,
            };
            &bytes[p.range.clone()]
        }))
    }

    /// Its bytes in one slice: borrowed when it is one buffer, copied together when in pieces.
    pub(crate) fn contiguous(&self) -> Cow<'_, [u8]> {
        if self.pieces.is_empty() {
            Cow::Borrowed(&self.own)
        } else {
            Cow::Owned(self.slices().collect::<Vec<_>>().concat())
        }
    }

    /// Its bytes in one buffer, which it is already unless it is in pieces (copied together).
    fn flatten(self) -> LineBuf {
        if self.pieces.is_empty() {
            self.own
        } else {
            LineBuf::from(self.contiguous().into_owned())
        }
    }

    /// Drops its first `bytes` bytes (a batch partly written when a reload replaced its
    /// output: rare), in one buffer from then on.
    pub(crate) fn advance(&mut self, bytes: usize) {
        let mut own = std::mem::take(self).flatten();
        own.advance(bytes);
        self.own = own;
    }

    /// The address of its first byte: which batch it is, among the batches alive at once (no
    /// byte is in two of them), for as long as it is not joined, advanced or fitted. (Its own
    /// buffer's address would not do: a batch of shared pieces alone has an empty one, at the
    /// same dangling address as every other.)
    pub(crate) fn first_byte(&self) -> usize {
        match self.pieces.first() {
            Some(piece) => {
                let bytes: &[u8] = match &piece.block {
                    Some(block) => block,
                    None => &self.own,
                };
                bytes.as_ptr() as usize + piece.range.start
            }
            None => self.own.as_ptr() as usize,
        }
    }

    /// Its bytes as a `Vec` of their own.
    #[cfg(test)]
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.flatten().into_vec()
    }

    /// Its bytes, copied (tests).
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.contiguous().into_owned()
    }

    /// Where its own buffer's bytes begin (tests: whether a buffer was taken whole).
    #[cfg(test)]
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.own.as_ptr()
    }

    /// How many of its bytes lie in shared blocks (tests: whether a block was copied).
    #[cfg(test)]
    pub(crate) fn shared_bytes(&self) -> usize {
        self.shared
    }
}

impl From<LineBuf> for Segments {
    fn from(own: LineBuf) -> Self {
        Segments {
            own,
            pieces: Vec::new(),
            shared: 0,
        }
    }
}

impl From<Vec<u8>> for Segments {
    fn from(vec: Vec<u8>) -> Self {
        Segments::from(LineBuf::from(vec))
    }
}

/// Equal when the bytes are, however they lie (tests).
#[cfg(test)]
impl PartialEq for Segments {
    fn eq(&self, other: &Segments) -> bool {
        self.contiguous() == other.contiguous()
    }
}

#[cfg(test)]
impl Eq for Segments {}

/// For the tests' comparisons with the bytes they expect.
#[cfg(test)]
impl PartialEq<Vec<u8>> for Segments {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.contiguous() == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared block of three lines, 30 bytes before its start.
    fn block() -> Arc<LineBuf> {
        let mut vec = vec![b'#'; 30];
        vec.extend_from_slice(b"one\ntwo\nthree\n");
        Arc::new(LineBuf::at(vec, 30))
    }

    #[test]
    fn batches_alive_at_once_have_their_own_first_byte_which_moves_with_them() {
        let block = block();
        // Two batches of shared pieces alone (their own buffers empty, at one dangling
        // address), and one of its own bytes.
        let mut first = Segments::default();
        first.push_shared(&block, 0..4);
        let mut second = Segments::default();
        second.push_shared(&block, 4..8);
        let own = Segments::from(b"own\n".to_vec());
        assert_eq!(first.first_byte(), block.as_ptr() as usize);
        assert_eq!(second.first_byte(), block.as_ptr() as usize + 4);
        assert_eq!(own.first_byte(), own.own.as_ptr() as usize);
        // Own bytes before the first shared piece: the batch's own buffer is where it begins.
        let mut mixed = Segments::from(b"x\n".to_vec());
        mixed.push_shared(&block, 8..14);
        assert_eq!(mixed.first_byte(), mixed.own.as_ptr() as usize);
        let at = first.first_byte();
        let moved = [first];
        assert_eq!(
            moved[0].first_byte(),
            at,
            "handed over and queued, it is where it was"
        );
    }

    #[test]
    fn pieces_read_back_in_the_order_they_were_written() {
        let block = block();
        let mut batch = Segments::default();
        batch.extend_from_slice(b"first");
        batch.push(b'\n');
        batch.push_shared(&block, 0..8);
        batch.push_shared(&block, 8..8);
        batch.extend_from_slice(b"THREE");
        batch.push(b'\n');
        batch.push_shared(&block, 0..4);
        batch.push_shared(&block, 8..14);
        assert_eq!(batch.len(), 30);
        assert_eq!(batch, b"first\none\ntwo\nTHREE\none\nthree\n".to_vec());
        assert!(format!("{batch:?}").contains("range: 8..14"), "{batch:?}");
        assert!(
            !format!("{batch:?}").contains("three"),
            "no bytes of the block"
        );
        // Consecutive writes to its own buffer are one piece; an empty range is none.
        let slices: Vec<&[u8]> = batch.slices().collect();
        assert_eq!(
            slices,
            [
                &b"first\n"[..],
                b"one\ntwo\n",
                b"THREE\n",
                b"one\n",
                b"three\n"
            ]
        );
        // The block is counted once, whatever its pieces.
        assert_eq!(batch.capacity(), batch.own_capacity() + block.capacity());
        batch.advance(10);
        assert_eq!(batch.slices().count(), 1, "in one buffer once advanced");
        assert_eq!(batch.into_vec(), b"two\nTHREE\none\nthree\n".to_vec());
    }

    #[test]
    fn a_batch_of_one_buffer_is_that_buffer() {
        let mut batch = Segments::from(b"a\n".to_vec());
        batch.extend_from_slice(b"b\n");
        assert!(matches!(batch.contiguous(), Cow::Borrowed(b"a\nb\n")));
        assert_eq!(batch.slices().count(), 1);
        assert_eq!(batch.shared_bytes(), 0);
        // Empty, it is one empty slice.
        assert_eq!(Segments::default().slices().collect::<Vec<_>>(), [b""]);
    }

    #[test]
    fn a_block_it_uses_little_of_is_copied_out_when_fitted() {
        // 100 KiB of lines, of which the batch keeps one line.
        let mut lines = b"kept\n".to_vec();
        lines.resize(100 * 1024, b'\n');
        let block = Arc::new(LineBuf::from(lines));
        let mut batch = Segments::default();
        batch.push_shared(&block, 0..5);
        batch.extend_from_slice(b"x\n");
        assert!(!batch.keeps_whole());
        batch.fit();
        assert!(batch.keeps_whole());
        assert_eq!((batch.shared_bytes(), batch.capacity()), (0, 7));
        assert_eq!(Arc::strong_count(&block), 1, "the block is let go");
        assert_eq!(batch, b"kept\nx\n".to_vec());
        // Using most of it, the block is kept.
        let mut batch = Segments::default();
        batch.push_shared(&block, 0..block.len());
        batch.fit();
        assert_eq!(batch.shared_bytes(), block.len());
    }

    #[test]
    #[should_panic(expected = "a range past the block's end")]
    fn a_range_past_the_block_is_refused() {
        Segments::default().push_shared(&block(), 10..15);
    }
}
