//! Reading a configuration file's text: bounded in size and nesting, TOML errors kept short.

use std::path::Path;

use saphyr_parser::Event;

use egresswatch_plugin_api::files;

use super::ConfigError;

/// Largest configuration file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Deepest nesting of mappings and sequences (tables and arrays in TOML) accepted in a
/// configuration file. YAML parsing time grows with the square of the flow nesting depth, so
/// the depth is checked with a parser that stops at the limit before the full parse.
pub const MAX_NESTING: usize = 64;

/// Reads a configuration file: a regular file (a FIFO or device is refused, never waited on)
/// of at most [`MAX_CONFIG_BYTES`], as UTF-8 text, nested at most [`MAX_NESTING`] deep when it
/// is YAML (any name but `*.toml`).
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    let text = files::read_regular_text(path, MAX_CONFIG_BYTES).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: e.into(),
    })?;
    if path.extension().is_none_or(|e| e != "toml") {
        check_yaml_nesting(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
    }
    Ok(text)
}

/// Err naming the line when YAML `text` nests deeper than [`MAX_NESTING`]. Other problems are
/// left to the full parse, except a nesting its own parser refuses too.
pub(super) fn check_yaml_nesting(text: &str) -> Result<(), String> {
    let too_deep = |line: usize| {
        format!("line {line}: nested deeper than {MAX_NESTING} levels of mappings and sequences")
    };
    let mut depth = 0usize;
    for item in saphyr_parser::Parser::new_from_str(text) {
        match item {
            Ok((Event::MappingStart(..) | Event::SequenceStart(..), span)) => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(span.start.line()));
                }
            }
            Ok((Event::MappingEnd | Event::SequenceEnd, _)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            // The other parser would take a time quadratic in this depth to say the same.
            Err(e) if e.info().contains("recursion limit") => {
                return Err(too_deep(e.marker().line()))
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A TOML error as `line L, column C: message`, without the echo of the offending line (which
/// may be a megabyte long).
pub(super) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line = files::LineIndex::new(&text[..start]).line(start);
            let column = text[line_start..start].chars().count() + 1;
            format!(
                "TOML parse error at line {line}, column {column}: {}",
                e.message().trim()
            )
        }
        None => format!("TOML parse error: {}", e.message().trim()),
    }
}
