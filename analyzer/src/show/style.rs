//! Terminal colour: ANSI SGR sequences when enabled, nothing otherwise, so
//! piped output stays plain text that greps the same as it reads.

#[derive(Debug, Clone, Copy)]
pub(crate) struct Style {
    pub on: bool,
}

impl Style {
    fn wrap(self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    /// Event numbers.
    pub fn event(self, s: &str) -> String {
        self.wrap("1;33", s)
    }
    /// Call context and symbols.
    pub fn call(self, s: &str) -> String {
        self.wrap("36", s)
    }
    /// Disassembly.
    pub fn code(self, s: &str) -> String {
        self.wrap("1", s)
    }
    /// Secondary detail (registers, raw bytes).
    pub fn dim(self, s: &str) -> String {
        self.wrap("2", s)
    }
    /// Reads.
    pub fn read(self, s: &str) -> String {
        self.wrap("32", s)
    }
    /// Writes.
    pub fn write(self, s: &str) -> String {
        self.wrap("35", s)
    }
    /// Problems: uninitialised bytes, crashes, memory outside allocations.
    pub fn bad(self, s: &str) -> String {
        self.wrap("1;31", s)
    }
}
