//! The crate's folders are layers (ARCHITECTURE.md): a module may import only modules of
//! its own layer or of the layers below it. This test reads the sources and fails on an
//! import that points up, so the layering cannot drift back into a cycle unnoticed.

use std::path::{Path, PathBuf};

/// Layers from the bottom up: each entry lists the top-level modules of that layer.
const LAYERS: &[&[&str]] = &[
    &[
        "caller",
        "config",
        "dependency",
        "error",
        "metrics",
        "net",
        "ratelimit",
        "redis_mailbox",
        "state",
        "stats",
        "turn",
    ],
    &["http"],
    &["ws"],
    &["api"],
    &["router", "openapi"],
    &["server"],
    &["lib"],
];

fn layer_of(module: &str) -> usize {
    LAYERS.iter().position(|l| l.contains(&module)).unwrap_or_else(|| panic!("module {module} has no layer"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_their_own_layer_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        let own = layer_of(top);
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let target: String =
                    rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if target.is_empty() || target == top {
                    continue;
                }
                // `crate::{a, b}` and public re-exports at the root (`crate::ServerConfig`) are
                // not module paths of a layer: skip them.
                if !LAYERS.iter().any(|l| l.contains(&target.as_str())) {
                    continue;
                }
                if layer_of(&target) > own {
                    wrong.push(format!("{}: imports crate::{target}", rel.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports pointing up a layer:\n{}", wrong.join("\n"));
}
