//! Builds the LD_PRELOAD allocation shim (`shim/ffirec_shim.c`) with the
//! system C compiler into `OUT_DIR/ffirec_shim.so`; the recorder embeds the
//! result with `include_bytes!` and writes it to a private file at record time.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim/ffirec_shim.c");
    println!("cargo:rerun-if-changed=shim/ffirec_shim.h");
    println!("cargo:rerun-if-env-changed=CC");

    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        fail("cargo did not set OUT_DIR");
    };
    let out = PathBuf::from(out_dir).join("ffirec_shim.so");
    let cc = std::env::var_os("CC").unwrap_or_else(|| OsString::from("cc"));
    let mut cmd = Command::new(&cc);
    cmd.args([
        "-O2",
        "-g",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-ftls-model=initial-exec",
        "-fno-plt",
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Wl,-soname,ffirec_shim.so",
        "-Wl,--as-needed",
        "-o",
    ])
    .arg(&out)
    .arg("shim/ffirec_shim.c")
    // dlsym lives in libdl before glibc 2.34, in libc after; --as-needed drops it when unused.
    .arg("-ldl");
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "compiling recorder/shim/ffirec_shim.c with {} failed ({status}); a C compiler and the glibc headers are required",
            cc.to_string_lossy()
        )),
        Err(e) => fail(&format!(
            "cannot run the C compiler {:?} ({e}); install a C compiler (e.g. `apt-get install gcc`) or set CC",
            cc
        )),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}
