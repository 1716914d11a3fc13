//! Perl as the host: Compress::Zlib (its XS module links the system's
//! libz.so.1) compressing, uncompressing and checksumming a Perl string.
//! Output as native; crc32 reads exactly the string's bytes. Skipped (with a
//! note) when perl or Compress::Zlib is missing.

mod common;
mod real_support;
mod record_support;

use std::path::Path;

use real_support::{call_bytes, named, rw};
use record_support::{native, record};

const ZLIB_PL: &str = r#"use Compress::Zlib;
my $d = join("", map { chr(($_ * 7) & 255) } 0..9999);
my $c = compress($d);
my $u = uncompress($c);
printf("%d %d %s %u\n", length($d), length($c), ($u eq $d ? "same" : "diff"), crc32($d));
exit 4;
"#;

#[test]
fn real_perl_compress_zlib() {
    if !real_support::have("perl", &["-MCompress::Zlib", "-e", "1"]) {
        eprintln!("note: perl with Compress::Zlib not available; test skipped");
        return;
    }
    let perl = Path::new("perl");
    let nat = native(perl, &["-e", ZLIB_PL]);
    assert_eq!(nat.status.code(), Some(4));
    let r = record("real_perl_zlib", perl, &["-e", ZLIB_PL], &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "10000 370 same 2696347972\n");
    let calls = call_bytes(&r.trace(), &r.events());
    // crc32(0, NULL, 0) for the initial value, then crc32(0, d, 10000).
    let crcs = named(&calls, "crc32");
    assert_eq!(crcs.iter().map(|c| c.args[2]).collect::<Vec<_>>(), vec![0, 10000]);
    let c = crcs[1];
    assert_eq!(c.rax, 2_696_347_972);
    assert_eq!(rw(c, c.args[1], 10001), (vec![(0, 10000)], vec![]), "crc32 reads exactly the string, not its NUL");
    assert_eq!((named(&calls, "deflateInit2_").len(), named(&calls, "inflateInit2_").len()), (1, 1));
}
