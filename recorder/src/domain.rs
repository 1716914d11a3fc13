//! Host, foreign and neutral code, and each thread's stack of domain frames.

use ffirec_format::Domain;

/// The C runtime: runs in whichever mode its caller is in.
pub const BUILTIN_NEUTRAL: &[&str] = &[
    "ld-linux*",
    "ld-*.so*",
    "libc.so*",
    "libc-*.so",
    "libm.so*",
    "libm-*.so",
    "libmvec.so*",
    "libpthread.so*",
    "libpthread-*.so",
    "libdl.so*",
    "libdl-*.so",
    "librt.so*",
    "librt-*.so",
    "libgcc_s.so*",
    "libstdc++.so*",
    "linux-vdso.so*",
    "[vdso]",
    "libffirec_alloc*",
];

/// `--lib` / `--neutral` patterns and which of them ever matched.
#[derive(Debug, Clone)]
pub struct Policy {
    pub foreign: Vec<String>,
    pub neutral: Vec<String>,
    pub foreign_matched: Vec<bool>,
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob(pat: &str, s: &str) -> bool {
    let (p, s) = (pat.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A pattern matches a path (when it has a `/`), else the file name or
/// soname; a bare name like `libz` also matches `libz.so*`.
pub fn matches(pat: &str, path: &str, soname: Option<&str>) -> bool {
    if pat.contains('/') {
        return glob(pat, path);
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    if glob(pat, file) || soname.is_some_and(|so| glob(pat, so)) {
        return true;
    }
    let bare = !pat.contains(['*', '?']) && !pat.contains(".so");
    bare && (file.starts_with(&format!("{pat}.so")) || soname.is_some_and(|so| so.starts_with(&format!("{pat}.so"))))
}

impl Policy {
    pub fn new(foreign: Vec<String>, extra_neutral: Vec<String>) -> Policy {
        let mut neutral: Vec<String> = BUILTIN_NEUTRAL.iter().map(|s| s.to_string()).collect();
        neutral.extend(extra_neutral);
        let foreign_matched = vec![false; foreign.len()];
        Policy { foreign, neutral, foreign_matched }
    }

    /// Domain of an object. The main executable is always host; an explicit
    /// `--lib` wins over the built-in neutral list.
    pub fn classify(&mut self, path: &str, soname: Option<&str>, is_main: bool) -> Domain {
        if is_main {
            return Domain::Host;
        }
        let mut foreign = false;
        for (i, p) in self.foreign.iter().enumerate() {
            if matches(p, path, soname) {
                self.foreign_matched[i] = true;
                foreign = true;
            }
        }
        if foreign {
            return Domain::Foreign;
        }
        if self.neutral.iter().any(|p| matches(p, path, soname)) {
            return Domain::Neutral;
        }
        if self.foreign.is_empty() {
            Domain::Foreign
        } else {
            Domain::Host
        }
    }

    pub fn unmatched(&self) -> impl Iterator<Item = &str> {
        self.foreign.iter().zip(&self.foreign_matched).filter(|(_, m)| !**m).map(|(p, _)| p.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Host (or neutral on its behalf) called into foreign code.
    Foreign,
    /// Foreign code called back into host code.
    Callback,
}

/// One boundary crossing still in progress on a thread.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub kind: FrameKind,
    /// The foreign call this frame belongs to.
    pub call: u64,
    /// `rsp` at the crossing (pointing at the return address).
    pub entry_rsp: u64,
    pub return_addr: u64,
    /// Where the crossing went (the called function).
    pub target: u64,
    /// Guards were dropped because the call blocked (see `Gap`); re-armed
    /// when the thread next enters foreign text.
    pub suspended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("ld-linux*", "ld-linux-x86-64.so.2"));
        assert!(glob("lib?.so", "libz.so"));
        assert!(!glob("libc.so*", "libcrypto.so.3"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn patterns() {
        assert!(matches("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", Some("libz.so.1")));
        assert!(matches("libz", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", Some("libz.so.1")));
        assert!(matches("/usr/lib/*/libz.so*", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", None));
        assert!(!matches("libz", "/usr/lib/libzstd.so.1", Some("libzstd.so.1")));
    }

    #[test]
    fn classification() {
        let mut p = Policy::new(vec![], vec![]);
        assert_eq!(p.classify("/lib/x86_64-linux-gnu/libc.so.6", Some("libc.so.6"), false), Domain::Neutral);
        assert_eq!(p.classify("/tmp/libfoo.so", None, false), Domain::Foreign);
        assert_eq!(p.classify("/tmp/prog", None, true), Domain::Host);
        let mut p = Policy::new(vec!["libfoo.so".into(), "libnever*".into()], vec![]);
        assert_eq!(p.classify("/tmp/libfoo.so", Some("libfoo.so"), false), Domain::Foreign);
        assert_eq!(p.classify("/tmp/libbar.so", None, false), Domain::Host);
        assert_eq!(p.unmatched().collect::<Vec<_>>(), vec!["libnever*"]);
    }
}
