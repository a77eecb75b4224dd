//! config/turnd.toml claims to document every key of the configuration with its
//! default. This checks the claim against the serde model in src/config.rs:
//!
//! - every key of the model, at every depth, appears in the example, set (`key = ...`)
//!   or commented out (`# key = ...`) inside its table, and every table has a header;
//! - every commented-out key names a real key of its table (no stale documentation);
//! - every value set outside `[[listen]]` and `[[auth.user]]` is the default, unless its
//!   line says "example";
//! - the example loads with `Config::load`.
//!
//! The model's keys are read from serde itself rather than from a list kept here: a
//! table with an unknown key fails with "unknown field `x`, expected one of `a`, `b`",
//! which names every field of that struct after renames, `Option` and
//! `skip_serializing` ones included. Serializing `Config::default()` cross-checks that
//! (it misses `None` and skipped fields, so it is only a lower bound).
// A test may unwrap: a panic is a failed test (the server code denies it, Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use turnd::config::Config;

const PROBE: &str = "zzz-not-a-key";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnd.toml")
}

/// What a dotted path of the model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `[table]` (a nested struct).
    Table,
    /// A `[[table]]` (a sequence of structs).
    Array,
    /// A value.
    Leaf,
}

/// The fields serde expects where `text` put an unknown key, or `None` when `text`
/// failed for another reason (or did not fail).
fn expected_fields(text: &str) -> Option<Vec<String>> {
    let err = toml::from_str::<Config>(text).err()?;
    let message = err.message();
    let rest = message.strip_prefix(&format!("unknown field `{PROBE}`, "))?;
    if rest == "there are no fields" {
        return Some(Vec::new());
    }
    // serde writes "expected `a`", "expected `a` or `b`", "expected one of `a`, `b`, `c`".
    let list = rest.strip_prefix("expected ")?;
    Some(list.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// The `[[...]]` headers that must precede a table below `path` (array elements must
/// exist before their subtables).
fn array_prefix(path: &str, kinds: &BTreeMap<String, Kind>) -> String {
    let mut prefix = String::new();
    let mut at = String::new();
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        at = if at.is_empty() { segment.to_owned() } else { format!("{at}.{segment}") };
        if kinds.get(&at) == Some(&Kind::Array) {
            prefix.push_str(&format!("[[{at}]]\n"));
        }
    }
    prefix
}

/// Every dotted path of the model (tables, arrays of tables and values) with its kind.
fn model_paths() -> BTreeMap<String, Kind> {
    let mut kinds = BTreeMap::new();
    let top = expected_fields(&format!("{PROBE} = 0\n"))
        .expect("serde no longer names the expected fields of Config in its unknown-field error");
    let mut todo: Vec<(String, Vec<String>)> = vec![(String::new(), top)];
    while let Some((table, fields)) = todo.pop() {
        for field in fields {
            let path = if table.is_empty() { field } else { format!("{table}.{field}") };
            let prefix = array_prefix(&table, &kinds);
            let as_table = expected_fields(&format!("{prefix}[{path}]\n{PROBE} = 0\n"));
            let as_array = || expected_fields(&format!("{prefix}[[{path}]]\n{PROBE} = 0\n"));
            if let Some(inner) = as_table {
                kinds.insert(path.clone(), Kind::Table);
                todo.push((path, inner));
            } else if let Some(inner) = as_array() {
                kinds.insert(path.clone(), Kind::Array);
                todo.push((path, inner));
            } else {
                kinds.insert(path, Kind::Leaf);
            }
        }
    }
    kinds
}

/// The dotted value paths of `value` (arrays of tables contribute their elements' keys).
fn serialized_leaves(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                serialized_leaves(&path, value, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(toml::Value::is_table) => {
            for item in items {
                serialized_leaves(prefix, item, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// A key found in the example.
#[derive(Debug)]
struct ExampleKey {
    /// 1-based line.
    line: usize,
    /// Whether it is commented out.
    commented: bool,
    /// The whole line.
    text: String,
}

/// The example's table headers and keys, dotted. A key belongs to the table of the
/// last live `[table]` or `[[table]]` header above it; a commented-out key counts when
/// the line without its `#` is itself a TOML assignment.
fn example_keys(source: &str) -> (BTreeSet<String>, BTreeMap<String, Vec<ExampleKey>>) {
    let mut headers = BTreeSet::new();
    let mut keys: BTreeMap<String, Vec<ExampleKey>> = BTreeMap::new();
    let mut table = String::new();
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            let header: toml::Table = toml::from_str(&format!("{trimmed}\n"))
                .unwrap_or_else(|e| panic!("line {}: not a table header: {e}", i + 1));
            // Only the header's own path: descend through single-key tables.
            let mut path = Vec::new();
            let mut at = &header;
            while let Some((name, value)) = at.iter().next() {
                path.push(name.clone());
                match value {
                    toml::Value::Table(t) => at = t,
                    toml::Value::Array(a) => match a.last() {
                        Some(toml::Value::Table(t)) => at = t,
                        _ => break,
                    },
                    _ => break,
                }
            }
            table = path.join(".");
            headers.insert(table.clone());
            continue;
        }
        let (commented, assignment) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        if assignment.is_empty() || !assignment.contains('=') {
            continue;
        }
        let Ok(parsed) = toml::from_str::<toml::Table>(assignment) else {
            assert!(commented, "line {}: a live line that is not TOML: {line}", i + 1);
            continue;
        };
        let mut leaves = BTreeSet::new();
        serialized_leaves("", &toml::Value::Table(parsed), &mut leaves);
        for key in leaves {
            let path = if table.is_empty() { key } else { format!("{table}.{key}") };
            keys.entry(path).or_default().push(ExampleKey { line: i + 1, commented, text: line.to_owned() });
        }
    }
    (headers, keys)
}

/// The value at a dotted path of a table, not looking into arrays.
fn value_at<'a>(table: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(table, |v, segment| v.as_table()?.get(segment))
}

#[test]
fn the_example_config_documents_every_key_with_its_default() {
    let path = example_path();
    let config = Config::load(&path).unwrap_or_else(|e| panic!("the example does not load: {e}"));
    assert!(config.has_credentials(), "the example should keep a credential");

    let kinds = model_paths();
    let model_leaves: BTreeSet<&str> =
        kinds.iter().filter(|(_, k)| **k == Kind::Leaf).map(|(p, _)| p.as_str()).collect();
    // The probe must see at least what serializing the defaults sees.
    let default = toml::Value::try_from(Config::default()).expect("Config serializes");
    let mut serialized = BTreeSet::new();
    serialized_leaves("", &default, &mut serialized);
    // (An empty array of tables, like the default `auth.user`, serializes as a value.)
    let unprobed: Vec<&String> = serialized
        .iter()
        .filter(|k| !model_leaves.contains(k.as_str()) && kinds.get(*k) != Some(&Kind::Array))
        .collect();
    assert!(unprobed.is_empty(), "keys serialized but not found by the unknown-field probe: {unprobed:?}");
    // And the probe must see the fields serialization cannot (None, skip_serializing),
    // or it is not reading the model.
    for known in ["alternate-server", "auth.secrets", "auth.user.password", "auth.user.key", "admin.token"] {
        assert!(model_leaves.contains(known), "the probe missed {known}: {model_leaves:?}");
    }

    let source = std::fs::read_to_string(&path).unwrap();
    let (headers, keys) = example_keys(&source);

    let missing: Vec<&str> = model_leaves.iter().copied().filter(|k| !keys.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "config/turnd.toml does not document these keys (add `key = default`, or `# key = example`): {missing:?}"
    );
    let missing_tables: Vec<&String> =
        kinds.iter().filter(|(p, k)| **k != Kind::Leaf && !headers.contains(*p)).map(|(p, _)| p).collect();
    assert!(missing_tables.is_empty(), "config/turnd.toml has no header for these tables: {missing_tables:?}");

    let unknown: Vec<String> = keys
        .iter()
        .filter(|(k, _)| !model_leaves.contains(k.as_str()))
        .flat_map(|(k, at)| at.iter().map(move |a| format!("line {}: {k}", a.line)))
        .collect();
    assert!(unknown.is_empty(), "config/turnd.toml documents keys the model does not have: {unknown:?}");

    // Values set outside the example-only arrays are the defaults, unless marked "example".
    let example = toml::Value::Table(toml::from_str(&source).unwrap());
    let mut wrong = Vec::new();
    for (key, at) in &keys {
        let in_array = kinds.iter().any(|(p, k)| *k == Kind::Array && key.starts_with(&format!("{p}.")));
        for found in at.iter().filter(|a| !a.commented && !a.text.contains("example")) {
            if in_array {
                continue;
            }
            let (shown, default) = (value_at(&example, key), value_at(&default, key));
            if shown != default {
                wrong.push(format!("line {}: {key} = {shown:?}, default {default:?}", found.line));
            }
        }
    }
    assert!(wrong.is_empty(), "config/turnd.toml shows values that are not the defaults: {wrong:?}");
}
