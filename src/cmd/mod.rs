pub mod record;
pub mod analyze;
