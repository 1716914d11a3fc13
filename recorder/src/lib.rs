//! The ptrace supervisor.
