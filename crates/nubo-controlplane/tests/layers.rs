//! The control plane's layering, checked on its source so that it stays
//! true: the application layer (`src/app/`) knows nothing of HTTP, and the
//! adapters over it (the EC2 API, the portal, the background tasks and the
//! domain modules) never call a REST handler or build an axum extractor by
//! hand to reach one. Only the REST adapters (`src/api/`) and the router's
//! assembly in `lib.rs` name `crate::api`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn all_sources() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    sources(&root, &root, &mut out);
    assert!(out.len() > 50, "found only {} source files under {}", out.len(), root.display());
    out
}

/// The code of a file without its comments (a doc comment may well
/// mention the REST layer).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| {
        let t = l.trim_start();
        !(t.starts_with("//") || t.starts_with("/*") || t.starts_with('*'))
    })
}

fn is_rest_adapter(file: &str) -> bool {
    file.starts_with("api/") || file == "lib.rs"
}

#[test]
fn only_the_rest_adapters_name_the_rest_handlers() {
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        if is_rest_adapter(&file) {
            continue;
        }
        for (n, line) in code_lines(&text) {
            let names_api = line.contains("crate::api")
                || line.contains("super::api")
                || line.contains("super::super::api")
                || line.contains("use crate::{api");
            if names_api {
                found.push(format!("{file}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "these modules reach into the REST handlers; call the application layer (crate::app) instead:\n{}",
        found.join("\n")
    );
}

/// An extractor built in an expression (`State(ctx.clone())`,
/// `ApiJson(p)`) is a call into a handler; one in a parameter
/// (`State(ctx): State<Arc<Ctx>>`) or a `let` pattern is how an adapter
/// receives its request, which is fine.
/// The lines of `text` that build an extractor in an expression.
fn hand_built_extractors(file: &str, text: &str) -> Vec<String> {
    const EXTRACTORS: [&str; 5] = ["State(", "ApiJson(", "ApiQuery(", "Path(", "Query("];
    let mut found = Vec::new();
    for (n, line) in code_lines(text) {
        for extractor in EXTRACTORS {
            let mut rest = line;
            while let Some(at) = rest.find(extractor) {
                let before = &rest[..at];
                let preceded_by_ident = before.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_');
                let after = &rest[at + extractor.len()..];
                // The matching parenthesis, then what follows it.
                let mut depth = 1;
                let mut end = after.len();
                for (i, c) in after.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                // Past the closing parentheses of an enclosing pattern,
                // such as `Ok(Query(v)) =>`.
                let following = after[end..].trim_start_matches(|c: char| c == ')' || c.is_whitespace());
                let is_pattern = following.starts_with(':')
                    || following.starts_with("=>")
                    || following.starts_with('=') && !following.starts_with("==")
                    || before.trim_end().ends_with("let")
                    || before.trim_end().ends_with('|');
                if !preceded_by_ident && !is_pattern {
                    found.push(format!("{file}:{n}: {}", line.trim()));
                }
                rest = &after[end..];
            }
        }
    }
    found
}

/// An extractor built in an expression (`State(ctx.clone())`,
/// `ApiJson(p)`) is a call into a handler; one in a parameter
/// (`State(ctx): State<Arc<Ctx>>`) or a pattern is how an adapter
/// receives its request, which is fine.
#[test]
fn no_adapter_builds_an_extractor_by_hand() {
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        if !is_rest_adapter(&file) {
            found.extend(hand_built_extractors(&file, &text));
        }
    }
    assert!(
        found.is_empty(),
        "these lines build an axum extractor by hand to call a handler; call the application layer (crate::app) instead:\n{}",
        found.join("\n")
    );
}

/// The check above is not vacuous: it finds what the portal used to write,
/// and passes what an adapter's own signature and patterns look like.
#[test]
fn the_extractor_check_tells_a_call_from_a_pattern() {
    let calls = "    let vols = api::volumes::list(c(), State(ctx.clone())).await?.0;\n    rest::attach(caller.clone(), State(ctx.clone()), Path(v.id.clone()), ApiJson(body))\n";
    assert_eq!(hand_built_extractors("x.rs", calls).len(), 4, "{calls}");
    let patterns = "async fn page(State(ctx): State<Arc<Ctx>>, Path(id): Path<String>) -> PageResult {\n    let ApiJson(p) = body;\n        Ok(axum::extract::Query(v)) => Ok(Self(v)),\n    let path = std::path::Path::new(\"x\");\n";
    assert_eq!(hand_built_extractors("x.rs", patterns), Vec::<String>::new());
}

#[test]
fn the_application_layer_knows_nothing_of_http() {
    let mut found = Vec::new();
    for (file, text) in all_sources() {
        if !file.starts_with("app/") {
            continue;
        }
        for (n, line) in code_lines(&text) {
            if line.contains("axum") || line.contains("StatusCode") || line.contains("HeaderMap") {
                found.push(format!("{file}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the application layer must not use HTTP types; move this to an adapter:\n{}",
        found.join("\n")
    );
}

/// States are enums (`nubo_api::state_enum!`): no struct of the control
/// plane or of the API types holds one as a string, and no code compares
/// one's spelling. (Comparing an enum with a `&str` does not compile
/// outside tests; this catches the spelled-out way round it.)
#[test]
fn states_are_enums_not_strings() {
    let api = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nubo-api/src");
    let mut files = all_sources();
    sources(&api, &api, &mut files);
    let mut found = Vec::new();
    for (file, text) in files {
        for (n, line) in code_lines(&text) {
            let l = line.trim();
            // A field that records a state (a user's input naming one,
            // such as a policy's `check_state`, is parsed where it is
            // checked, with its own message).
            let field = l.strip_prefix("pub ").unwrap_or(l);
            let holds_string = ["state", "desired", "attach_state"].iter().any(|name| {
                [": String", ": Option<String>"].iter().any(|ty| field.starts_with(&format!("{name}{ty}")))
            });
            let compares_spelling =
                ["state.as_str() ==", "state.as_str() !=", "desired.as_str() ==", "desired.as_str() !="]
                    .iter()
                    .any(|p| l.contains(p))
                    || l.contains("matches!(") && (l.contains("state.as_str()") || l.contains("desired.as_str()"));
            if holds_string || compares_spelling {
                found.push(format!("{file}:{n}: {l}"));
            }
        }
    }
    assert!(found.is_empty(), "a state held or compared as a string; use its enum:\n{}", found.join("\n"));
}
