//! Embeds the statement list from `../schema/*.sql` (file-name order) into the binary.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
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
    let revision_file = dir.join("REVISION");
    println!("cargo:rerun-if-changed={}", revision_file.display());
    let text = std::fs::read_to_string(&revision_file).expect("schema/REVISION");
    let field = |key: &str| -> String {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("schema/REVISION lacks `{key} = …`"))
    };
    let revision: i32 = field("revision").parse().expect("revision is an integer");
    let min_compatible: i32 = field("min_compatible")
        .parse()
        .expect("min_compatible is an integer");
    assert!(
        (1..=revision).contains(&min_compatible),
        "schema/REVISION: min_compatible must be between 1 and revision"
    );
    writeln!(
        out,
        "/// `revision` from `schema/REVISION`.\npub const REVISION: i32 = {revision};\n\
         /// `min_compatible` from `schema/REVISION`.\npub const MIN_COMPATIBLE: i32 = {min_compatible};\n\
         /// `digest` from `schema/REVISION`: what the list must hash to at this revision.\n\
         #[cfg(test)]\nconst RECORDED_DIGEST: &str = {:?};",
        field("digest")
    )
    .unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("schema_statements.rs");
    std::fs::write(dest, out).unwrap();
}
