//! The house rules cargo cannot check by itself (docs/dev/architecture.md):
//!
//! - the crates come in the order a reading flows, and each depends only on crates before
//!   it (cargo forbids a cycle, not an edge against the order);
//! - no module imports a module that imports it back, nor any longer loop;
//! - only `gridgate-api` serves gRPC and only `gridgate-web` knows axum;
//! - every crate takes the workspace lints;
//! - nothing points at a document outside the repository, and every `docs/…` or crate path
//!   a source file or document names exists.
//!
//! Each rule is a function over text, with a test that feeds it a deliberate violation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's crates in the order data flows: a crate may depend only on crates
/// before it. A new crate gets its place here (and a section in docs/dev/architecture.md).
const ORDER: &[&str] = &[
    "gridgate-proto",
    "gridgate-drivers",
    "gridgate-core",
    "gridgate-ledger",
    "gridgate-config",
    "gridgate-acquire",
    "gridgate-store",
    "gridgate-mqtt",
    "gridgate-ledger-node",
    "gridgate-dr",
    "gridgate-openadr",
    "gridgate-api",
    "gridgate-web",
    "gridgate-app",
    "gridgate-node",
    "gridgate",
    "gridgate-tests",
];

/// Crates allowed to name a dependency, by dependency: what only one layer may know.
const ONLY: &[(&str, &[&str])] = &[
    ("axum", &["gridgate-web"]),
    ("tonic-health", &["gridgate-api"]),
    ("tonic-reflection", &["gridgate-api"]),
    ("rumqttd", &["gridgate-mqtt"]),
    // The consensus engine is the validators' alone: never in the gateway binary, whose
    // aarch64 size budget it would break.
    ("commonware-actor", &["gridgate-node"]),
    ("commonware-codec", &["gridgate-node"]),
    ("commonware-consensus", &["gridgate-node"]),
    ("commonware-cryptography", &["gridgate-node"]),
    ("commonware-p2p", &["gridgate-node"]),
    ("commonware-parallel", &["gridgate-node"]),
    ("commonware-runtime", &["gridgate-node"]),
    ("commonware-stream", &["gridgate-node"]),
    ("commonware-utils", &["gridgate-node"]),
    (
        "redb",
        &[
            "gridgate-store",
            "gridgate-ledger-node",
            "gridgate-dr",
            "gridgate-openadr",
            "gridgate",
        ],
    ),
    // The OpenADR VTN is reached through one crate (and the tests' back office).
    ("openleadr-client", &["gridgate-openadr", "gridgate-tests"]),
    ("reqwest", &["gridgate-openadr"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A workspace member: its name, folder and manifest.
struct Member {
    name: String,
    dir: PathBuf,
    manifest: toml::Table,
}

fn members() -> Vec<Member> {
    let root = root();
    let ws: toml::Table = std::fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut dirs = Vec::new();
    for m in ws["workspace"]["members"].as_array().unwrap() {
        let m = m.as_str().unwrap();
        match m.strip_suffix("/*") {
            Some(parent) => {
                for e in std::fs::read_dir(root.join(parent)).unwrap() {
                    let p = e.unwrap().path();
                    if p.join("Cargo.toml").exists() {
                        dirs.push(p);
                    }
                }
            }
            None => dirs.push(root.join(m)),
        }
    }
    dirs.into_iter()
        .map(|dir| {
            let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap()
                .parse()
                .unwrap();
            let name = manifest["package"]["name"].as_str().unwrap().to_string();
            Member {
                name,
                dir,
                manifest,
            }
        })
        .collect()
}

/// Dependencies (normal, build and dev) a manifest names.
fn dependencies(manifest: &toml::Table) -> BTreeSet<String> {
    ["dependencies", "build-dependencies", "dev-dependencies"]
        .iter()
        .filter_map(|k| manifest.get(*k).and_then(|v| v.as_table()))
        .flat_map(|t| t.keys().cloned())
        .collect()
}

/// Every edge from `crate_` to a workspace crate that is not before it in `order`.
fn against_the_order(order: &[&str], crate_: &str, deps: &BTreeSet<String>) -> Vec<String> {
    let Some(at) = order.iter().position(|c| *c == crate_) else {
        return vec![format!("{crate_} has no place in the order")];
    };
    deps.iter()
        .filter(|d| d.starts_with("gridgate"))
        .filter(|d| order.iter().position(|c| c == d).is_none_or(|p| p >= at))
        .map(|d| format!("{crate_} depends on {d}, which does not come before it"))
        .collect()
}

#[test]
fn crates_depend_only_on_crates_before_them() {
    let mut wrong = Vec::new();
    for m in members() {
        wrong.extend(against_the_order(
            ORDER,
            &m.name,
            &dependencies(&m.manifest),
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_dependency_against_the_order_is_caught() {
    // What the check says of a deliberate bad edge: the store depending on the API.
    let deps: BTreeSet<String> = ["gridgate-core", "gridgate-api"].map(String::from).into();
    assert_eq!(
        against_the_order(ORDER, "gridgate-store", &deps),
        ["gridgate-store depends on gridgate-api, which does not come before it"]
    );
    assert!(!against_the_order(ORDER, "gridgate-newcomer", &deps).is_empty());
}

#[test]
fn what_only_one_layer_may_know_stays_there() {
    let mut wrong = Vec::new();
    for m in members() {
        let deps = dependencies(&m.manifest);
        for (dep, allowed) in ONLY {
            if deps.contains(*dep) && !allowed.contains(&m.name.as_str()) {
                wrong.push(format!(
                    "{} depends on {dep} (only {allowed:?} may)",
                    m.name
                ));
            }
        }
        // tonic's server side: only the api crate implements a service.
        if m.name != "gridgate-api" && m.name != "gridgate-proto" && m.name != "gridgate-tests" {
            for (file, text) in sources(&m.dir.join("src")) {
                let code = strip_tests(&text);
                if code.contains("_server::") || code.contains("transport::Server") {
                    wrong.push(format!("{} serves gRPC", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_crate_takes_the_workspace_lints() {
    let lacking: Vec<String> = members()
        .into_iter()
        .filter(|m| {
            m.name != "gridgate-proto" // generated code; it forbids unsafe code itself
                && m.manifest
                    .get("lints")
                    .and_then(|l| l.get("workspace"))
                    .and_then(|w| w.as_bool())
                    != Some(true)
        })
        .map(|m| m.name)
        .collect();
    assert!(
        lacking.is_empty(),
        "no `[lints] workspace = true`: {lacking:?}"
    );
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p, text));
            }
        }
    }
    out.sort();
    out
}

/// The text before a file's test module, without comments: what the crate itself uses.
fn strip_tests(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A module's path inside its crate, from its file's path under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The modules of one crate and, for each, the modules it names (`crate::a::b`, `super::c`,
/// `use super::{d, e}`), each resolved to the longest module that exists; a module's own
/// ancestors and descendants are not edges.
fn module_graph(
    src: &Path,
    files: &[(PathBuf, String)],
) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|(f, t)| (module_of(src, f), strip_tests(t)))
        .collect();
    let resolve = |mut path: Vec<String>| {
        while !path.is_empty() && !modules.contains_key(&path) {
            path.pop();
        }
        path
    };
    let mut graph = BTreeMap::new();
    for (m, code) in &modules {
        // `super` of a file `a/b.rs` (module a::b) and of `a/b/mod.rs` (also a::b) is `a`.
        let parent: Vec<String> = m[..m.len().saturating_sub(1)].to_vec();
        let mut named = BTreeSet::new();
        let mut add = |base: &[String], rest: &[&str]| {
            let mut p = base.to_vec();
            p.extend(rest.iter().map(|s| s.to_string()));
            let t = resolve(p);
            let related = t.is_empty() || t.starts_with(m) || m.starts_with(&t);
            if !related {
                named.insert(t);
            }
        };
        let words: Vec<&str> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{' || c == ','))
            .collect();
        for w in words {
            let (base, rest) = if let Some(r) = w.strip_prefix("crate::") {
                (Vec::new(), r)
            } else if let Some(mut r) = w.strip_prefix("super::") {
                let mut base = parent.clone();
                while let Some(rr) = r.strip_prefix("super::") {
                    base.pop();
                    r = rr;
                }
                (base, r)
            } else {
                continue;
            };
            match rest.split_once('{') {
                Some((head, group)) => {
                    let head: Vec<&str> = head.split("::").filter(|s| !s.is_empty()).collect();
                    for name in group.split(',') {
                        let mut p = head.clone();
                        p.extend(name.split("::").filter(|s| !s.is_empty() && *s != "self"));
                        add(&base, &p);
                    }
                }
                None => add(
                    &base,
                    &rest
                        .split("::")
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                ),
            }
        }
        graph.insert(m.clone(), named);
    }
    graph
}

/// The module loops of a graph (strongly connected components of more than one module).
fn loops(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    // Two modules are in one loop when each reaches the other.
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(m) = stack.pop() {
            for n in graph.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    stack.push(n.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in graph.keys() {
        if done.contains(m) {
            continue;
        }
        let scc: Vec<String> = graph
            .keys()
            .filter(|n| *n == m || (reaches[m].contains(*n) && reaches[n].contains(m)))
            .inspect(|n| {
                done.insert((*n).clone());
            })
            .map(|n| n.join("::"))
            .collect();
        if scc.len() > 1 {
            out.push(scc);
        }
    }
    out
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut found = Vec::new();
    for m in members() {
        let src = m.dir.join("src");
        let files = sources(&src);
        for l in loops(&module_graph(&src, &files)) {
            found.push(format!("{}: {}", m.name, l.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "module loops: {found:#?}");
}

#[test]
fn a_module_loop_is_caught() {
    let src = Path::new("/x/src");
    let file = |p: &str, t: &str| (src.join(p), t.to_string());
    let files = [
        file("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        file("a.rs", "use crate::b::Thing;"),
        file("b.rs", "use super::c::{self, Other};"),
        file(
            "c.rs",
            "fn f() { crate::a::g() }\n#[cfg(test)]\nuse crate::b::Thing;",
        ),
    ];
    let graph = module_graph(src, &files);
    assert_eq!(loops(&graph), [vec!["a", "b", "c"]]);
    // Without c's edge back to a there is no loop; the test module's use does not count.
    let mut files = files;
    files[3] = file("c.rs", "fn f() {}\n#[cfg(test)]\nuse crate::a::g;");
    assert!(loops(&module_graph(src, &files)).is_empty());
}

/// Text files of the repository a reader follows: sources, manifests, docs, scripts.
fn repository_texts() -> Vec<(PathBuf, String)> {
    let root = root();
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".ci" || name == "target" || name == "node_modules"
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if ["rs", "md", "toml", "sh", "bb", "service"]
                .iter()
                .any(|x| p.extension().is_some_and(|e| e == *x))
                || name == "run"
            {
                if let Ok(t) = std::fs::read_to_string(&p) {
                    out.push((p, t));
                }
            }
        }
    }
    out
}

/// What a text points at that is not in the repository at `root`.
fn stale_pointers(root: &Path, file: &Path, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // The team's shared notes, by name: spelled in two halves so that this file is not itself
    // a pointer to them.
    let notes = [
        concat!("DESIGN", ".md"),
        concat!("STYLE", ".md"),
        concat!("../", "shared"),
    ];
    for bad in notes {
        if text.contains(bad) {
            out.push(format!(
                "{} points at {bad}, outside the repository",
                file.display()
            ));
        }
    }
    // Paths the repository's readers follow: docs and crate sources named from the root.
    for prefix in [
        "docs/",
        "crates/",
        "gateway/src/",
        "drivers/src/",
        "tests/e2e/",
    ] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || "/_-.".contains(c)))
                .unwrap_or(tail.len());
            let path = tail[..end].trim_end_matches('.');
            rest = &tail[end..];
            // Only a path that starts a word, and names a file or folder.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '/' || c == '.' || c == '_') {
                continue;
            }
            if path.ends_with('/') && path.matches('/').count() == 1 {
                continue;
            }
            if !root.join(path).exists() {
                out.push(format!(
                    "{} names {path}, which does not exist",
                    file.display()
                ));
            }
        }
    }
    out
}

#[test]
fn nothing_points_outside_the_repository_or_at_what_is_gone() {
    let root = root();
    let mut found = Vec::new();
    for (file, text) in repository_texts() {
        if file.ends_with("tests/tidy/main.rs") {
            continue;
        }
        found.extend(stale_pointers(&root, &file, &text));
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_stale_pointer_is_caught() {
    let root = root();
    let f = Path::new("README.md");
    assert!(
        stale_pointers(
            &root,
            f,
            "see docs/dev/architecture.md and crates/store/src/lib.rs."
        )
        .is_empty()
    );
    assert_eq!(
        stale_pointers(&root, f, concat!("(see ../", "shared/", "DESIGN", ".md)")).len(),
        2
    );
    assert_eq!(
        stale_pointers(&root, f, "the relay (gateway/src/dr/relay.rs) ").len(),
        1
    );
}
