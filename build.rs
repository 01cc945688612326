//! Records what `$edgeHub` reports of this binary: the git commit it was built from and a build
//! number (the count of commits), or `unknown` outside a git checkout.

fn git(args: &[&str]) -> String {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

fn main() {
    println!(
        "cargo:rustc-env=EDGEHUB_COMMIT={}",
        git(&["rev-parse", "--short=12", "HEAD"])
    );
    println!(
        "cargo:rustc-env=EDGEHUB_BUILD={}",
        git(&["rev-list", "--count", "HEAD"])
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}
