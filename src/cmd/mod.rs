pub mod analyze;
pub mod diff;
pub mod dump;
pub mod record;
pub mod show;
