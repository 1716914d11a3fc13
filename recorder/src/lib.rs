//! The ptrace supervisor.
pub mod alloc;
