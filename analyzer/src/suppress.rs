//! Suppressions: silence known findings.
//!
//! File format, one rule per line, `#` starts a comment:
//!
//! ```text
//! # zlib reads its window before filling it; known and harmless
//! kind=uninit symbol=inflate_fast* module=libz.so*
//! kind=exposed_pointer call=deflate
//! ```
//!
//! A rule is `key=glob` words; a finding is suppressed when every word of one
//! rule matches. Keys: `kind` (a finding kind name: uninit, out_of_bounds,
//! use_after_free, read_only_write, exposed_pointer, foreign_leak, crash),
//! `symbol` and `module` (of the instruction), `call` (the foreign function
//! the finding happened in), `file` (source file of the instruction, when
//! known). Globs: `*` any run of characters, `?` one character.

use std::path::Path;

use crate::findings::{Finding, Kind};
use crate::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suppressions {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    kind: Option<Kind>,
    symbol: Option<String>,
    module: Option<String>,
    call: Option<String>,
    file: Option<String>,
}

impl Suppressions {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|(line, reason)| Error::Suppressions {
            path: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the file text; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut r = Rule { kind: None, symbol: None, module: None, call: None, file: None };
            for word in line.split_whitespace() {
                let (k, v) = word.split_once('=').ok_or((n + 1, format!("`{word}` is not key=value")))?;
                match k {
                    "kind" => r.kind = Some(Kind::from_name(v).ok_or((n + 1, format!("unknown finding kind `{v}`")))?),
                    "symbol" => r.symbol = Some(v.to_string()),
                    "module" => r.module = Some(v.to_string()),
                    "call" => r.call = Some(v.to_string()),
                    "file" => r.file = Some(v.to_string()),
                    _ => return Err((n + 1, format!("unknown key `{k}` (kind, symbol, module, call, file)"))),
                }
            }
            rules.push(r);
        }
        Ok(Suppressions { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn matches(&self, f: &Finding) -> bool {
        let field = |pat: &Option<String>, val: Option<&str>| match pat {
            None => true,
            Some(p) => val.is_some_and(|v| glob(p, v)),
        };
        self.rules.iter().any(|r| {
            r.kind.iter().all(|&k| k == f.kind)
                && field(&r.symbol, f.at.symbol.as_deref())
                && field(&r.module, f.at.module.as_deref())
                && field(&r.call, f.call.as_ref().map(|c| c.symbol.as_str()))
                && field(&r.file, f.at.file.as_deref())
        })
    }
}

/// `*` and `?` glob match.
pub(crate) fn glob(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("libz*", "libz.so.1"));
        assert!(glob("*fast", "inflate_fast"));
        assert!(glob("in?late*", "inflate_fast"));
        assert!(glob("libz*", "libzstd"));
        assert!(!glob("deflate", "deflate_slow"));
        assert!(glob("*", ""));
    }

    #[test]
    fn parse_errors_name_the_line() {
        assert_eq!(Suppressions::parse("# c\n\nkind=uninit\nbogus").unwrap_err().0, 4);
        assert_eq!(Suppressions::parse("kind=nope").unwrap_err().0, 1);
        assert_eq!(Suppressions::parse("kind=uninit symbol=foo* # why").unwrap().rules.len(), 1);
    }
}
