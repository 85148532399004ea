//! Recipes: checking a recipe before it enters the catalogue, the built-in
//! recipes shipped with Nubo (TOML files in `recipes/`), and turning a
//! recipe plus parameter values into what the agent runs.

use crate::error::AppError;
use crate::provisioning::RecipeRow;
use crate::store::now_ms;
use nubo_api::agent::RunAction;
use nubo_api::params::{RecipeCreate, RecipeParam};
use std::collections::BTreeMap;

/// Largest recipe body (script or cloud-config).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest parameter value.
pub const MAX_PARAM_BYTES: usize = 4096;
const MAX_PARAMS: usize = 32;
const DEFAULT_TIMEOUT_SECS: u64 = 1800;
const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Environment variables a parameter may not replace: the script needs them.
const RESERVED_ENV: &[&str] = &["PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "IFS", "TERM", "LANG", "ENV", "PS1"];

/// Recipes shipped with Nubo, as TOML (the same format `nubo recipe create -f` reads).
pub const BUILTIN_RECIPES: &[&str] =
    &[include_str!("../recipes/web-server.toml"), include_str!("../recipes/kv-store.toml")];

fn bad(msg: String) -> AppError {
    AppError::BadRequest(msg)
}

/// The environment variable a parameter is passed as.
pub fn env_name(param: &str) -> String {
    param.to_ascii_uppercase()
}

fn check_version(v: &str) -> Result<(), AppError> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "recipe version '{}' is invalid: use 1-32 letters, digits, '.', '-', '_' or '+', e.g. 1.0.0",
            v.chars().take(40).collect::<String>()
        )))
    }
}

fn check_param(p: &RecipeParam) -> Result<(), AppError> {
    let ok = (1..=32).contains(&p.name.len())
        && p.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && p.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(bad(format!(
            "parameter name '{}' is invalid: use [a-z][a-z0-9_]*, at most 32 characters",
            p.name.chars().take(40).collect::<String>()
        )));
    }
    if RESERVED_ENV.contains(&env_name(&p.name).as_str()) || p.name.starts_with("nubo_") {
        return Err(bad(format!(
            "parameter name '{}' would replace the script's {} environment variable; choose another name",
            p.name,
            env_name(&p.name)
        )));
    }
    if let Some(d) = &p.default {
        check_value(&p.name, d)?;
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), AppError> {
    if value.len() > MAX_PARAM_BYTES {
        return Err(bad(format!("parameter {name} is {} bytes; the limit is {MAX_PARAM_BYTES}", value.len())));
    }
    if value.contains('\0') {
        return Err(bad(format!("parameter {name} contains a NUL byte")));
    }
    Ok(())
}

/// Checks a recipe and turns it into a catalogue row for `project`
/// (`None`: built in).
pub fn check(r: &RecipeCreate, project: Option<&str>) -> Result<RecipeRow, AppError> {
    crate::validate::name(&r.name)?;
    check_version(&r.version)?;
    if r.description.len() > 1024 {
        return Err(bad("the recipe description is longer than 1024 bytes".into()));
    }
    match r.kind.as_str() {
        "script" => {
            if r.body.trim().is_empty() {
                return Err(bad("the recipe body is empty: give the script to run".into()));
            }
        }
        "cloud-config" => {
            if !r.body.starts_with("#cloud-config") {
                return Err(bad("a cloud-config recipe's body must start with '#cloud-config'".into()));
            }
        }
        other => {
            return Err(bad(format!(
                "recipe kind '{}' is unknown: use 'script' or 'cloud-config'",
                other.chars().take(40).collect::<String>()
            )))
        }
    }
    if r.body.len() > MAX_BODY_BYTES {
        return Err(bad(format!("the recipe body is {} bytes; the limit is {MAX_BODY_BYTES}", r.body.len())));
    }
    if r.body.contains('\0') {
        return Err(bad("the recipe body contains a NUL byte".into()));
    }
    if r.params.len() > MAX_PARAMS {
        return Err(bad(format!("the recipe declares {} parameters; the limit is {MAX_PARAMS}", r.params.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for p in &r.params {
        check_param(p)?;
        if !seen.insert(p.name.as_str()) {
            return Err(bad(format!("parameter {} is declared twice", p.name)));
        }
    }
    let timeout = r.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
        return Err(bad(format!("timeout_secs is {timeout}; use 1 to {MAX_TIMEOUT_SECS}")));
    }
    Ok(RecipeRow {
        project_id: project.map(str::to_string),
        name: r.name.clone(),
        version: r.version.clone(),
        description: r.description.clone(),
        kind: r.kind.clone(),
        params_json: serde_json::to_string(&r.params).map_err(AppError::internal)?,
        body: r.body.clone(),
        timeout_secs: timeout as i64,
        created_at_ms: now_ms(),
        seq: 0,
    })
}

/// The built-in recipes, parsed. A broken one is a bug in Nubo.
pub fn builtins() -> anyhow::Result<Vec<RecipeRow>> {
    BUILTIN_RECIPES
        .iter()
        .map(|text| {
            let r: RecipeCreate =
                toml::from_str(text).map_err(|e| anyhow::anyhow!("a built-in recipe does not parse: {e}"))?;
            check(&r, None).map_err(|e| anyhow::anyhow!("built-in recipe {} is invalid: {e}", r.name))
        })
        .collect()
}

pub fn params_of(row: &RecipeRow) -> Vec<RecipeParam> {
    serde_json::from_str(&row.params_json).unwrap_or_default()
}

/// What to run for `row` with `given` values: every declared parameter
/// gets a value (given or default), unknown ones are refused. Returns the
/// action and the complete parameter map (recorded with the run).
pub fn render(
    row: &RecipeRow,
    given: &BTreeMap<String, String>,
) -> Result<(RunAction, BTreeMap<String, String>), AppError> {
    let declared = params_of(row);
    for name in given.keys() {
        if !declared.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = declared.iter().map(|p| p.name.as_str()).collect();
            return Err(bad(format!(
                "recipe {}@{} has no parameter '{}'; its parameters are: {}",
                row.name,
                row.version,
                name.chars().take(40).collect::<String>(),
                if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
            )));
        }
    }
    let mut values = BTreeMap::new();
    for p in &declared {
        let value = match (given.get(&p.name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(bad(format!(
                    "recipe {}@{} needs parameter '{}' ({}): pass --param {}=VALUE",
                    row.name,
                    row.version,
                    p.name,
                    if p.description.is_empty() { "no description" } else { &p.description },
                    p.name
                )))
            }
        };
        check_value(&p.name, &value)?;
        values.insert(p.name.clone(), value);
    }
    let action = match row.kind.as_str() {
        "cloud-config" => RunAction::CloudInit,
        _ => RunAction::Script {
            body: row.body.clone(),
            env: values.iter().map(|(k, v)| (env_name(k), v.clone())).collect(),
        },
    };
    Ok((action, values))
}

/// A cloud-config recipe's document with `{{name}}` replaced by the values.
pub fn render_cloud_config(row: &RecipeRow, values: &BTreeMap<String, String>) -> String {
    let mut out = row.body.clone();
    for (k, v) in values {
        out = out.replace(&format!("{{{{{k}}}}}"), v).replace(&format!("{{{{ {k} }}}}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> RecipeCreate {
        RecipeCreate {
            name: "web".into(),
            version: "1.0".into(),
            description: String::new(),
            kind: "script".into(),
            params: vec![
                RecipeParam { name: "port".into(), description: "TCP port".into(), default: Some("80".into()) },
                RecipeParam { name: "page".into(), description: "the text".into(), default: None },
            ],
            body: "#!/bin/sh\necho $PORT\n".into(),
            timeout_secs: None,
        }
    }

    #[test]
    fn builtins_parse_and_pass_the_checks() {
        let all = builtins().expect("builtins");
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["web-server", "kv-store"]);
        for r in &all {
            assert!(r.body.starts_with("#!/bin/sh"), "{}", r.name);
            assert!(params_of(r).iter().all(|p| p.default.is_some()), "{}: every built-in param has a default", r.name);
        }
    }

    #[test]
    fn render_fills_defaults_and_refuses_missing_or_unknown() {
        let row = check(&recipe(), Some("p-1")).expect("valid");
        let mut given = BTreeMap::new();
        let err = render(&row, &given).unwrap_err().to_string();
        assert!(err.contains("needs parameter 'page'") && err.contains("--param page=VALUE"), "{err}");
        given.insert("page".to_string(), "hi there".to_string());
        let (action, values) = render(&row, &given).expect("render");
        assert_eq!(values.get("port").map(String::as_str), Some("80"));
        match action {
            RunAction::Script { env, .. } => {
                assert!(
                    env.contains(&("PORT".into(), "80".into())) && env.contains(&("PAGE".into(), "hi there".into()))
                )
            }
            other => panic!("unexpected {other:?}"),
        }
        given.insert("colour".to_string(), "red".to_string());
        let err = render(&row, &given).unwrap_err().to_string();
        assert!(err.contains("no parameter 'colour'") && err.contains("port, page"), "{err}");
    }

    #[test]
    fn bad_recipes_are_refused_with_reasons() {
        type Change = Box<dyn Fn(&mut RecipeCreate)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.version = "1 0".into()), "version"),
            (Box::new(|r| r.kind = "ansible".into()), "kind 'ansible' is unknown"),
            (Box::new(|r| r.body = "  ".into()), "body is empty"),
            (Box::new(|r| r.params[0].name = "Port".into()), "[a-z][a-z0-9_]*"),
            (Box::new(|r| r.params[0].name = "path".into()), "PATH"),
            (Box::new(|r| r.params[1].name = "port".into()), "declared twice"),
            (Box::new(|r| r.timeout_secs = Some(0)), "timeout_secs"),
            (Box::new(|r| r.body = "x".repeat(MAX_BODY_BYTES + 1)), "limit"),
            (
                Box::new(|r| {
                    r.kind = "cloud-config".into();
                    r.body = "packages: [nginx]".into()
                }),
                "#cloud-config",
            ),
        ];
        for (change, want) in cases {
            let mut r = recipe();
            change(&mut r);
            let err = check(&r, None).unwrap_err().to_string();
            assert!(err.contains(want), "want '{want}' in: {err}");
        }
    }

    #[test]
    fn cloud_config_substitution() {
        let mut r = recipe();
        r.kind = "cloud-config".into();
        r.body = "#cloud-config\nwrite_files:\n  - path: /x\n    content: \"{{page}} on {{ port }}\"\n".into();
        let row = check(&r, None).expect("valid");
        let mut given = BTreeMap::new();
        given.insert("page".to_string(), "hello".to_string());
        let (action, values) = render(&row, &given).expect("render");
        assert_eq!(action, RunAction::CloudInit);
        assert!(render_cloud_config(&row, &values).contains("\"hello on 80\""));
    }
}
