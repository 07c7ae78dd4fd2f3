//! Where each key of the configuration file is: dotted key paths (`detector.geoip.database`,
//! `detector.jobs[0].bucket_span`) to 1-based line numbers, so that a problem the plugin reports
//! by key path points at the line that holds it.
//!
//! YAML is read with `saphyr-parser`'s event stream, whose events carry their position (the
//! parser behind `serde_yaml_ng` keeps positions in its errors only); TOML with the `toml`
//! crate's spanned tables. Either way only positions are taken: the values come from the normal
//! configuration parse.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};
use toml::de::{DeTable, DeValue};

/// Lines of the keys of one configuration file.
#[derive(Debug, Default, Clone)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
    /// Keys set twice in one YAML mapping: path, line of the repeat, line of the first.
    duplicates: Vec<(String, usize, usize)>,
}

impl KeyLines {
    /// The key lines of YAML text; empty when the text is not YAML.
    pub fn yaml(text: &str) -> KeyLines {
        let mut walker = YamlWalker::default();
        // A parse error leaves what was read before it, which is still right.
        let _ = Parser::new_from_str(text).load(&mut walker, false);
        KeyLines {
            lines: walker.lines,
            duplicates: walker.duplicates,
        }
    }

    /// The key lines of TOML text; empty when the text is not TOML.
    pub fn toml(text: &str) -> KeyLines {
        let mut lines = HashMap::new();
        if let Ok(root) = DeTable::parse(text) {
            let index = egresswatch_plugin_api::files::LineIndex::new(text);
            let line = |offset: usize| index.line(offset);
            walk_toml(root.get_ref(), "", &line, &mut lines);
        }
        // TOML's own parser refuses a key defined twice.
        KeyLines {
            lines,
            duplicates: Vec::new(),
        }
    }

    /// The line of `path`, or of its nearest enclosing key that is in the file (a key that is
    /// absent is reported at the table that should hold it).
    #[cfg(test)]
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        self.nearest(path).map(|(_, line)| line)
    }

    /// The line of exactly `path`.
    pub(crate) fn exact(&self, path: &str) -> Option<usize> {
        self.lines.get(path).copied()
    }

    /// The nearest enclosing key of `path` that is in the file, with its line.
    pub fn nearest<'p>(&self, path: &'p str) -> Option<(&'p str, usize)> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some((path, line));
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Keys set twice in one mapping: path, line of the repeat, line of the first.
    pub(crate) fn duplicates(&self) -> &[(String, usize, usize)] {
        &self.duplicates
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn walk_toml(
    table: &DeTable<'_>,
    path: &str,
    line: &dyn Fn(usize) -> usize,
    out: &mut HashMap<String, usize>,
) {
    for (key, value) in table {
        let here = join(path, key.get_ref());
        out.entry(here.clone()).or_insert(line(key.span().start));
        walk_toml_value(value.get_ref(), &here, line, out);
    }
}

fn walk_toml_value(
    value: &DeValue<'_>,
    path: &str,
    line: &dyn Fn(usize) -> usize,
    out: &mut HashMap<String, usize>,
) {
    match value {
        DeValue::Table(t) => walk_toml(t, path, line, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let here = format!("{path}[{i}]");
                out.entry(here.clone()).or_insert(line(item.span().start));
                walk_toml_value(item.get_ref(), &here, line, out);
            }
        }
        _ => {}
    }
}

/// One open YAML collection while walking the events.
enum Frame {
    /// A mapping at `path`; `key` is the key whose value comes next, `None` while a key is
    /// expected.
    Map { path: String, key: Option<String> },
    /// A sequence at `path`; `index` is the next item's.
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct YamlWalker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicates: Vec<(String, usize, usize)>,
}

impl YamlWalker {
    /// The path of the node that starts now (a value, not a key).
    fn value_path(&mut self, line: usize) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => join(path, key.as_deref().unwrap_or("?")),
            Some(Frame::Seq { path, index }) => {
                let here = format!("{path}[{index}]");
                self.lines.entry(here.clone()).or_insert(line);
                here
            }
        }
    }

    /// A value of the enclosing collection is complete.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for YamlWalker {
    fn on_event(&mut self, event: Event<'input>, span: Span) {
        let line = span.start.line();
        let expecting_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
        match event {
            Event::Scalar(text, ..) if expecting_key => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    let here = join(path, &text);
                    match self.lines.get(&here) {
                        // `?`: inside a complex key; `<<`: a merge key, which may repeat.
                        Some(&first) if !here.starts_with('?') && text != "<<" => {
                            self.duplicates.push((here, line, first));
                        }
                        Some(_) => {}
                        None => {
                            self.lines.insert(here, line);
                        }
                    }
                    *key = Some(text.into_owned());
                }
            }
            Event::Scalar(..) | Event::Alias(..) => {
                self.value_path(line);
                self.value_done();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) if expecting_key => {
                // A complex key: its inside has no path; it is skipped as a key named "?".
                let path = String::from("?");
                let frame = match event {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, index: 0 },
                };
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some("?".to_owned());
                }
                self.stack.push(frame);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(line);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(line);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
plugin: x.so
detector:
  rules: [rules/]
  geoip:
    databse: geo.mmdb
  jobs:
    - id: a
      bucket_span: 15m
    - {id: b, function: rare}
  actions:
    rules:
      abc-123: { annotate: true }
";

    #[test]
    fn many_toml_keys_are_placed_in_linear_time() {
        // 30k keys: counting each key's line from the start of the file is quadratic.
        let mut text = String::from("[detector]\n");
        for i in 0..30_000 {
            text.push_str(&format!("k{i} = 1\n"));
        }
        let lines = KeyLines::toml(&text);
        assert_eq!(lines.line_of("detector.k0"), Some(2));
        assert_eq!(lines.line_of("detector.k29999"), Some(30_001));
    }

    #[test]
    fn yaml_keys_nested_keys_and_sequence_items_have_their_lines() {
        let lines = KeyLines::yaml(YAML);
        assert_eq!(lines.line_of("plugin"), Some(1));
        assert_eq!(lines.line_of("detector.rules"), Some(3));
        assert_eq!(lines.line_of("detector.rules[0]"), Some(3));
        assert_eq!(lines.line_of("detector.geoip.databse"), Some(5));
        assert_eq!(lines.line_of("detector.jobs[0].bucket_span"), Some(8));
        assert_eq!(lines.line_of("detector.jobs[1].function"), Some(9));
        assert_eq!(lines.line_of("detector.actions.rules.abc-123"), Some(12));
        // Absent keys are placed at their nearest present parent.
        assert_eq!(lines.line_of("detector.geoip.cache_entries"), Some(4));
        assert_eq!(lines.line_of("detector.models.jobs.x"), Some(2));
        assert_eq!(lines.line_of("nothing"), None);
    }

    #[test]
    fn keys_set_twice_in_one_mapping_are_found() {
        let lines = KeyLines::yaml(
            "a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\nlist:\n  - {c: 1}\n  - {c: 2}\na: 4\n",
        );
        assert_eq!(
            lines.duplicates(),
            [("b.c".to_owned(), 5, 3), ("a".to_owned(), 9, 1)]
        );
        assert!(KeyLines::yaml(YAML).duplicates().is_empty());
    }

    #[test]
    fn toml_keys_and_tables_have_their_lines() {
        let text = "plugin = \"x.so\"\n\n[detector]\nrules = [\"rules/\"]\n\n[detector.geoip]\ndatabse = \"g\"\n\n[[detector.jobs]]\nid = \"a\"\n";
        let lines = KeyLines::toml(text);
        assert_eq!(lines.line_of("detector.rules"), Some(4));
        assert_eq!(lines.line_of("detector.geoip.databse"), Some(7));
        assert_eq!(lines.line_of("detector.jobs[0].id"), Some(10));
    }
}
