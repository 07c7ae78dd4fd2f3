//! The host's side of a streamed state save: [`StateSink`], the trait object the host lends to
//! [`Transform::save_state_to`](crate::Transform::save_state_to), and the two adapters between it
//! and `std::io::Write`: [`WriteSink`] (host: a sink that writes into a writer) and
//! [`SinkWriter`] (plugin: a writer that writes into the sink).

// See the crate root: the lint fires on abi_stable's expansion.
#![allow(non_local_definitions)]

use std::io::{self, Write};

use abi_stable::{
    sabi_trait,
    sabi_trait::TD_Opaque,
    sabi_types::RMut,
    std_types::{RResult, RSlice},
};

use crate::{ErrorKind, PluginError};

/// Where a plugin writes its state during [`Transform::save_state_to`](crate::Transform::save_state_to).
#[sabi_trait]
pub trait StateSink {
    /// Takes the next bytes of the state, in order. An error ends the save: the plugin stops
    /// writing and returns an error.
    #[sabi(last_prefix_field)]
    fn write(&mut self, bytes: RSlice<'_, u8>) -> RResult<(), PluginError>;
}

/// A [`StateSink`] borrowed for one save.
pub type StateSinkMut<'a> = StateSink_TO<'a, RMut<'a, ()>>;

/// The host's sink: writes into `out`, and keeps the first error `out` gave, which says more
/// than what the plugin makes of it.
pub struct WriteSink<'w> {
    out: &'w mut dyn Write,
    error: Option<io::Error>,
}

impl<'w> WriteSink<'w> {
    /// A sink writing into `out`.
    pub fn new(out: &'w mut dyn Write) -> Self {
        WriteSink { out, error: None }
    }

    /// The sink as the trait object the plugin takes.
    pub fn as_sink(&mut self) -> StateSinkMut<'_> {
        StateSink_TO::from_ptr(self, TD_Opaque)
    }

    /// The first error of the writer, if it failed.
    pub fn into_error(self) -> Option<io::Error> {
        self.error
    }
}

impl StateSink for WriteSink<'_> {
    fn write(&mut self, bytes: RSlice<'_, u8>) -> RResult<(), PluginError> {
        if let Some(e) = &self.error {
            return RResult::RErr(PluginError::new(ErrorKind::State, e.to_string()));
        }
        match self.out.write_all(bytes.as_slice()) {
            Ok(()) => RResult::ROk(()),
            Err(e) => {
                let error = PluginError::new(ErrorKind::State, e.to_string());
                self.error = Some(e);
                RResult::RErr(error)
            }
        }
    }
}

/// The plugin's writer into the host's sink: each write crosses the boundary once, so put it
/// behind a buffer. Keeps the first error of the sink, to be returned as it is.
pub struct SinkWriter<'s> {
    sink: StateSinkMut<'s>,
    error: Option<PluginError>,
}

impl<'s> SinkWriter<'s> {
    /// A writer into `sink`.
    pub fn new(sink: StateSinkMut<'s>) -> Self {
        SinkWriter { sink, error: None }
    }

    /// The first error of the sink, if it failed.
    pub fn into_error(self) -> Option<PluginError> {
        self.error
    }
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.message.to_string()));
        }
        match self.sink.write(buf.into()) {
            RResult::ROk(()) => Ok(buf.len()),
            RResult::RErr(e) => {
                let io = io::Error::other(e.message.to_string());
                self.error = Some(e);
                Err(io)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `left` bytes, then fails.
    struct Full {
        left: usize,
        taken: Vec<u8>,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            let n = buf.len().min(self.left);
            self.taken.extend_from_slice(&buf[..n]);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_cross_both_adapters_in_order_and_the_first_error_is_kept_on_each_side() {
        let mut out = Full {
            left: 10,
            taken: Vec::new(),
        };
        let mut host = WriteSink::new(&mut out);
        let mut plugin = SinkWriter::new(host.as_sink());
        plugin.write_all(b"abcd").unwrap();
        plugin.write_all(b"efgh").unwrap();
        let err = plugin.write_all(b"ijkl").unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        // Later writes fail without reaching the writer again.
        assert!(plugin.write_all(b"m").is_err());
        let plugin_error = plugin.into_error().expect("the sink's error is kept");
        assert_eq!(plugin_error.kind(), Some(ErrorKind::State));
        let host_error = host.into_error().expect("the writer's error is kept");
        assert_eq!(host_error.kind(), io::ErrorKind::StorageFull);
        assert_eq!(out.taken, b"abcdefghij");
    }
}
