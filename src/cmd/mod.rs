pub mod record;
pub mod analyze;
pub mod dump;
