//! Self-contained schemas gathered into one document: each schema's
//! `definitions` moved beside it and its `$ref`s rewritten, for a bundle of
//! snapshots and for AsyncAPI documents built from snapshots.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Map, Value};

use super::schema::SCHEMA_DIALECT;
use super::snapshot::StoredSnapshot;

/// Where a schema's own subschemas are, as schemars writes them.
const LOCAL_DEFINITIONS: &str = "#/definitions/";

/// What a name must have percent-encoded in a `$ref` (a URI fragment).
const FRAGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// The schemas of `snapshots` in one draft-07 document: each under
/// `definitions` as `<TYPE>.v<VERSION>`, the subschemas they use beside
/// them (one shared copy where two schemas define the same subschema,
/// renamed `Name_2` where they define different ones under one name), every
/// `$ref` rewritten to match.
///
/// ```
/// use events::contract::{bundle, Snapshots};
///
/// let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// let bundled = bundle(&Snapshots::new(fixtures).load()?);
/// let v2 = &bundled["definitions"]["orders.order_placed.v2"];
/// assert_eq!(v2["required"], serde_json::json!(["order_id", "total_cents", "customer_id"]));
/// # Ok::<(), events::Error>(())
/// ```
pub fn bundle(snapshots: &[StoredSnapshot]) -> Value {
    let mut definitions = Map::new();
    for snapshot in snapshots {
        hoist(
            &snapshot.cloudevents_type(),
            snapshot.schema(),
            "#/definitions/",
            &mut definitions,
        );
    }
    json!({
        "$schema": SCHEMA_DIALECT,
        "description": "Event payload schemas, one definition per `<TYPE>.v<VERSION>`.",
        "definitions": definitions,
    })
}

/// Moves self-contained schema `schema` into `target` (a map that `$ref`s
/// reach as `prefix` + name) under `name`, or `name_2`... if that is taken,
/// and its `definitions` beside it: a definition equal to one `target`
/// already has under its name is shared, a different one is renamed.
/// Returns the name the schema got.
pub(super) fn hoist(
    name: &str,
    schema: &Value,
    prefix: &str,
    target: &mut Map<String, Value>,
) -> String {
    let mut root = schema.clone();
    let definitions = match root.as_object_mut() {
        Some(object) => {
            object.remove("$schema");
            match object.remove("definitions") {
                Some(Value::Object(definitions)) => definitions,
                _ => Map::new(),
            }
        }
        None => Map::new(),
    };
    let root_name = free_name(target, name, &BTreeSet::new());
    // Held until the schema is written, so no definition takes the name.
    target.insert(root_name.clone(), Value::Null);
    let rewriter = |renames: &BTreeMap<String, String>| Rewriter {
        prefix,
        root: &root_name,
        renames: renames.clone(),
    };

    // A definition is shared when the one in `target` is the same schema
    // once its references are rewritten; whether they are depends on the
    // names the others get, so drop the ones that turn out different until
    // the choice holds.
    let identity: BTreeMap<String, String> =
        definitions.keys().map(|n| (n.clone(), n.clone())).collect();
    let mut shared: BTreeSet<&String> = definitions
        .iter()
        .filter(|(n, d)| target.get(*n) == Some(&rewriter(&identity).rewrite(d)))
        .map(|(n, _)| n)
        .collect();
    let renames = loop {
        let mut renames = BTreeMap::new();
        let mut taken = BTreeSet::new();
        for n in definitions.keys() {
            let new = if shared.contains(n) {
                n.clone()
            } else {
                free_name(target, n, &taken)
            };
            taken.insert(new.clone());
            renames.insert(n.clone(), new);
        }
        let rewrite = rewriter(&renames);
        let different: Vec<&String> = shared
            .iter()
            .copied()
            .filter(|n| target.get(*n) != Some(&rewrite.rewrite(&definitions[*n])))
            .collect();
        if different.is_empty() {
            break renames;
        }
        for n in different {
            shared.remove(n);
        }
    };

    let rewrite = rewriter(&renames);
    for (n, definition) in &definitions {
        if !shared.contains(n) {
            target.insert(renames[n].clone(), rewrite.rewrite(definition));
        }
    }
    target.insert(root_name.clone(), rewrite.rewrite(&root));
    root_name
}

/// `base`, or `base_2`, `base_3`... whichever is in neither `target` nor
/// `taken`.
fn free_name(target: &Map<String, Value>, base: &str, taken: &BTreeSet<String>) -> String {
    let free = |n: &String| !target.contains_key(n) && !taken.contains(n);
    let mut candidate = base.to_owned();
    let mut n = 2;
    while !free(&candidate) {
        candidate = format!("{base}_{n}");
        n += 1;
    }
    candidate
}

/// Rewrites one schema's references for its new place.
struct Rewriter<'a> {
    prefix: &'a str,
    /// The schema's own name (`#` refers to it).
    root: &'a str,
    renames: BTreeMap<String, String>,
}

impl Rewriter<'_> {
    fn rewrite(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, v)| {
                        let v = match (key.as_str(), v) {
                            ("$ref", Value::String(reference)) => self.reference(reference),
                            _ => self.rewrite(v),
                        };
                        (key.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.rewrite(v)).collect()),
            other => other.clone(),
        }
    }

    fn reference(&self, reference: &str) -> Value {
        let target = if reference == "#" {
            Some(self.root)
        } else {
            reference
                .strip_prefix(LOCAL_DEFINITIONS)
                .and_then(|encoded| self.renames.get(&ref_name(encoded)))
                .map(String::as_str)
        };
        match target {
            Some(name) => format!("{}{}", self.prefix, ref_fragment(name)).into(),
            // Not into this schema's definitions: left as written.
            None => reference.into(),
        }
    }
}

/// The name a `$ref`'s last segment stands for: percent-decoded, then
/// JSON-pointer unescaped.
pub(super) fn ref_name(encoded: &str) -> String {
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8_lossy()
        .replace("~1", "/")
        .replace("~0", "~")
}

/// A name as a `$ref`'s last segment: JSON-pointer escaped, then
/// percent-encoded where a URI fragment needs it.
pub(super) fn ref_fragment(name: &str) -> String {
    let escaped = name.replace('~', "~0").replace('/', "~1");
    utf8_percent_encode(&escaped, FRAGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_line(sku_type: &str) -> Value {
        json!({
            "$schema": SCHEMA_DIALECT,
            "title": "Placed",
            "type": "object",
            "properties": { "line": { "$ref": "#/definitions/Line" }, "next": { "$ref": "#" } },
            "definitions": {
                "Line": { "type": "object", "properties": { "sku": { "type": sku_type } } },
                "Wrapper<T>": { "type": "array" },
            },
        })
    }

    #[test]
    fn definitions_move_beside_the_schema_and_references_follow() {
        let mut target = Map::new();
        let name = hoist(
            "orders.placed.v1",
            &with_line("string"),
            "#/x/",
            &mut target,
        );
        assert_eq!(name, "orders.placed.v1");
        let root = &target["orders.placed.v1"];
        assert_eq!(root["properties"]["line"]["$ref"], "#/x/Line");
        assert_eq!(root["properties"]["next"]["$ref"], "#/x/orders.placed.v1");
        assert!(root.get("definitions").is_none() && root.get("$schema").is_none());
        assert_eq!(target["Line"]["properties"]["sku"]["type"], "string");
        assert!(target.contains_key("Wrapper<T>"));
    }

    #[test]
    fn an_equal_definition_is_shared_and_a_different_one_renamed() {
        let mut target = Map::new();
        hoist("a.v1", &with_line("string"), "#/x/", &mut target);
        hoist("b.v1", &with_line("string"), "#/x/", &mut target);
        assert_eq!(target["b.v1"]["properties"]["line"]["$ref"], "#/x/Line");
        assert!(!target.contains_key("Line_2"));

        hoist("c.v1", &with_line("integer"), "#/x/", &mut target);
        assert_eq!(target["c.v1"]["properties"]["line"]["$ref"], "#/x/Line_2");
        assert_eq!(target["Line_2"]["properties"]["sku"]["type"], "integer");
        assert_eq!(target["Line"]["properties"]["sku"]["type"], "string");
    }

    #[test]
    fn a_definition_equal_in_text_but_pointing_elsewhere_is_not_shared() {
        // `Outer` reads the same in both, but its `Line` is not.
        let schema = |sku_type: &str| {
            json!({
                "properties": { "outer": { "$ref": "#/definitions/Outer" } },
                "definitions": {
                    "Outer": { "properties": { "line": { "$ref": "#/definitions/Line" } } },
                    "Line": { "properties": { "sku": { "type": sku_type } } },
                },
            })
        };
        let mut target = Map::new();
        hoist("a.v1", &schema("string"), "#/x/", &mut target);
        hoist("b.v1", &schema("integer"), "#/x/", &mut target);
        let outer = target["b.v1"]["properties"]["outer"]["$ref"]
            .as_str()
            .unwrap();
        assert_eq!(outer, "#/x/Outer_2");
        assert_eq!(
            target["Outer_2"]["properties"]["line"]["$ref"],
            "#/x/Line_2"
        );
    }

    #[test]
    fn names_are_escaped_in_references() {
        let mut target = Map::new();
        target.insert("Wrapper<T>".into(), json!(false));
        let schema = json!({
            "properties": { "w": { "$ref": "#/definitions/Wrapper%3CT%3E" } },
            "definitions": { "Wrapper<T>": { "type": "array" } },
        });
        hoist("b.v1", &schema, "#/x/", &mut target);
        assert_eq!(
            target["b.v1"]["properties"]["w"]["$ref"],
            "#/x/Wrapper%3CT%3E_2"
        );
        assert_eq!(ref_fragment("a/b~c"), "a~1b~0c");
        assert_eq!(ref_name("a~1b~0c"), "a/b~c");
    }
}
