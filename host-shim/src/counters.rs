//! The counters the engine keeps while it runs: logged on exit, exported by [`crate::metrics`].
//! Their own module so that the engine, which fills them, and the metrics, which read them, do
//! not import each other (the metrics read the outputs' health, and the engine writes to the
//! outputs).

/// Counters the host keeps; printed on exit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostCounters {
    /// Lines read.
    pub lines_in: u64,
    /// Lines that were not valid UTF-8.
    pub not_utf8: u64,
    /// Lines longer than `batch.max_line_bytes`.
    pub oversize: u64,
    /// Lines the plugin could not read (not a JSON object).
    pub unreadable: u64,
    /// Batches the plugin returned an error for (or panicked on).
    pub plugin_errors: u64,
    /// Events the plugin replaced with annotated text.
    pub annotated: u64,
    /// Events the plugin routed to a named output.
    pub routed: u64,
    /// Replacement texts rejected because they contained a line terminator; those events were
    /// written as they came.
    pub rejected_replacements: u64,
}
