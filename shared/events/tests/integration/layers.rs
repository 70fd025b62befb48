//! ARCHITECTURE's "dependencies point down only", checked on the source: no
//! module of a lower layer names a module of a higher one in code (doc
//! comments may point anywhere).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first, each a directory (or file, without `.rs`)
/// under `src/`: a layer may name itself and the layers before it. The
/// order is ARCHITECTURE's layer diagram.
const LAYERS: &[&str] = &[
    "versioning",
    "envelope",
    "transport",
    "backend",
    "wire",
    "bus",
    "consumer",
];

/// What no layer names: the features built on top of them all.
const ON_TOP: &[&str] = &["outbox", "contract", "testing"];

/// The modules `layer` must not name: the layers above it, what is on top,
/// `otel` below the bus (which, with the runtime, is what uses it), and for
/// the backends, which know nothing of events, the envelope and versions.
fn forbidden(layer: &str) -> Vec<&'static str> {
    let at = LAYERS.iter().position(|l| *l == layer).unwrap();
    let mut names: Vec<&'static str> = LAYERS[at + 1..].iter().chain(ON_TOP).copied().collect();
    if at < LAYERS.iter().position(|l| *l == "bus").unwrap() {
        names.push("otel");
    }
    if layer == "backend" {
        names.extend(["envelope", "versioning"]);
    }
    names
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut breaks = Vec::new();
    let mut files_read = 0;
    let mut downward = 0;
    for layer in LAYERS {
        let forbidden = forbidden(layer);
        for file in rust_files(&src, layer) {
            files_read += 1;
            let text = fs::read_to_string(&file).unwrap();
            for (line, module) in crate_paths(&text) {
                if forbidden.contains(&module.as_str()) {
                    breaks.push(format!(
                        "{}:{line}: {layer} names crate::{module}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                } else if module != *layer {
                    downward += 1;
                }
            }
        }
    }
    // The scan saw the source: every layer's files, and the references
    // that do point down (a parser that found nothing would pass anything).
    assert!(files_read >= 30, "only {files_read} files read");
    assert!(downward >= 20, "only {downward} downward references found");
    assert!(
        breaks.is_empty(),
        "upward dependencies:\n{}",
        breaks.join("\n")
    );
}

#[test]
fn the_scan_finds_single_grouped_and_nested_paths_but_not_comments() {
    let text = "use crate::wire::Codec;\n\
                /// [`crate::bus`] in a doc comment\n\
                // crate::outbox in a comment\n\
                use crate::{\n    error::Result,\n    consumer::{Claim, ClaimToken},\n};\n\
                let x = crate::transport::MAX_CAPACITY; // crate::testing\n";
    let found: BTreeSet<(usize, String)> = crate_paths(text).into_iter().collect();
    let expected: BTreeSet<(usize, String)> =
        [(1, "wire"), (5, "error"), (6, "consumer"), (8, "transport")]
            .into_iter()
            .map(|(l, m)| (l, m.to_owned()))
            .collect();
    assert_eq!(found, expected);
}

/// `src/<layer>.rs` and every `.rs` file under `src/<layer>/`.
fn rust_files(src: &Path, layer: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{layer}.rs"));
    if file.is_file() {
        files.push(file);
    }
    let mut dirs = vec![src.join(layer)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// The top-level module of every `crate::` path in code (comments removed),
/// with its line; a group `crate::{a::x, b}` gives each of `a` and `b`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut rest = 0;
    while let Some(at) = code[rest..].find("crate::") {
        let start = rest + at + "crate::".len();
        rest = start;
        if code[start..].starts_with('{') {
            // Top-level names of the group: those at brace depth 1, each
            // at the start of the group or after a comma.
            let mut depth = 0;
            let mut expect_name = true;
            for (offset, c) in code[start..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && is_ident(c) => {
                        let name = ident_at(&code[start + offset..]);
                        found.push((line_of(start + offset), name));
                        expect_name = false;
                    }
                    c if !c.is_whitespace() && depth == 1 => expect_name = false,
                    _ => {}
                }
            }
        } else {
            let name = ident_at(&code[start..]);
            if !name.is_empty() {
                found.push((line_of(start), name));
            }
        }
    }
    found
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(text: &str) -> String {
    text.chars().take_while(|&c| is_ident(c)).collect()
}
