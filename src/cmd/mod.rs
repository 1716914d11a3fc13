pub mod record;
pub mod analyze;
pub mod dump;
pub mod diff;
pub mod show;
