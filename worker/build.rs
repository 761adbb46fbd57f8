//! Embeds the statement list from `../schema/*.sql` (file-name order) into the binary.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Lets the test harness tell which checkout a `worker` binary was built from.
    println!(
        "cargo:rustc-env=LETTUCE_BUILD_SOURCE={}",
        env!("CARGO_MANIFEST_DIR")
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("schema/ directory")
        .map(|e| e.expect("schema entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut out = String::from(
        "/// `(file name, SQL)` in apply order.\npub const STATEMENTS: &[(&str, &str)] = &[\n",
    );
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().unwrap().to_str().unwrap();
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.canonicalize().unwrap().display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("schema_statements.rs");
    std::fs::write(dest, out).unwrap();
}
