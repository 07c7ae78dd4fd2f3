//! `egresswatch fluent-bit-lua`: the in-process filter script for Fluent Bit's `lua` filter
//! (`examples/fluent-bit-inprocess/egresswatch.lua`), with its settings block written for one
//! configuration. The script takes the field list from the detector the library builds from
//! that configuration, so the fields it reads always match the jobs.

use std::path::Path;

/// The script as kept in the repository; only its settings block changes.
pub const TEMPLATE: &str = include_str!("../../examples/fluent-bit-inprocess/egresswatch.lua");

const BEGIN: &str = "-- ew:settings-begin\n";
const END: &str = "-- ew:settings-end\n";

/// What the script is set to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings<'a> {
    /// The plugin library (`libegresswatch_plugin.so`).
    pub library: &'a Path,
    /// The egresswatch configuration whose `detector:` section the script loads.
    pub config: &'a Path,
    /// The state file, if any.
    pub state: Option<&'a Path>,
    /// Seconds between periodic saves.
    pub save_every_secs: u64,
}

/// The script with `settings` in its settings block.
pub fn script(settings: &Settings<'_>) -> String {
    let start = TEMPLATE.find(BEGIN).map_or(0, |i| i + BEGIN.len());
    let end = TEMPLATE[start..].find(END).map_or(start, |i| start + i);
    let path = |p: &Path| lua_string(&p.to_string_lossy());
    let block = format!(
        "local SETTINGS = {{\n  library = {},\n  config = {},\n  state = {},\n  \
         save_every_secs = {},\n}}\n",
        path(settings.library),
        path(settings.config),
        settings.state.map_or_else(|| "nil".to_owned(), path),
        settings.save_every_secs.max(1),
    );
    format!("{}{block}{}", &TEMPLATE[..start], &TEMPLATE[end..])
}

/// A Lua string literal.
fn lua_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_settings_block_changes() {
        let s = script(&Settings {
            library: Path::new("/opt/ew/lib\"x.so"),
            config: Path::new("/etc/ew.yaml"),
            state: None,
            save_every_secs: 30,
        });
        assert!(s.contains("library = \"/opt/ew/lib\\\"x.so\","), "{s}");
        assert!(s.contains("state = nil,") && s.contains("save_every_secs = 30,"));
        let tail = |t: &str| t[t.find(END).unwrap()..].to_owned();
        assert_eq!(tail(&s), tail(TEMPLATE));
        assert_eq!(
            &s[..s.find(BEGIN).unwrap()],
            &TEMPLATE[..TEMPLATE.find(BEGIN).unwrap()]
        );
    }
}
