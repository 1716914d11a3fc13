//! Trace analysis.
