//! Build script: records the git commit weir is built from as `WEIR_COMMIT` (for
//! `weir_build_info` and `weir --version`): `WEIR_COMMIT` from the environment when set (a build
//! from a source tarball), else `git rev-parse`, else `unknown`.

use std::process::Command;

fn main() {
    let from_env = std::env::var("WEIR_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = from_env.unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    });
    println!("cargo:rustc-env=WEIR_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=WEIR_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
