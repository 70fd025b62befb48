//! Which changes between two schemas of one payload type break someone.
//!
//! Events are read in both directions across a change: consumers built
//! from the new schema read events published under the old one (replays,
//! a stream's backlog, producers not yet redeployed), and consumers still on
//! the old schema read events published under the new one. A change is
//! compatible only if it breaks neither: in practice, a new optional field.
//! Everything else a type may change needs a new `VERSION` (and an
//! upcaster), so [`compare`] reports it with the side it breaks.
//!
//! The comparison is structural over draft-07 as schemars writes it
//! (objects, arrays, scalars with formats and ranges, enums, tagged and
//! untagged alternatives, `Option` as "or null", `$ref`s to `definitions`).
//! A difference in a keyword it does not analyse (`allOf`, `not`,
//! `patternProperties`...) is reported as breaking both sides: the check
//! never passes a change it did not understand.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// Who a change breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Breaks {
    /// No one: an additive change (a new optional field).
    Nothing,
    /// Events published under the old schema no longer decode into the new
    /// type (a field became required, a variant was removed).
    OldEvents,
    /// Consumers still on the old schema cannot decode events published
    /// under the new one, or lose data they read (a field was removed, a
    /// variant added, a range widened).
    OldConsumers,
    /// Both.
    Both,
}

impl Breaks {
    /// Whether the change needs a new `VERSION`.
    pub fn is_breaking(self) -> bool {
        self != Breaks::Nothing
    }

    /// A short, lowercase description.
    pub const fn as_str(self) -> &'static str {
        match self {
            Breaks::Nothing => "compatible",
            Breaks::OldEvents => "breaks decoding of events already published",
            Breaks::OldConsumers => "breaks consumers of the old schema",
            Breaks::Both => "breaks old events and old consumers",
        }
    }

    fn with(self, other: Breaks) -> Breaks {
        match (self, other) {
            (Breaks::Nothing, b) | (b, Breaks::Nothing) => b,
            (a, b) if a == b => a,
            _ => Breaks::Both,
        }
    }
}

impl fmt::Display for Breaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A field is new.
    FieldAdded,
    /// A field is gone (removed or renamed).
    FieldRemoved,
    /// An optional field became required.
    MadeRequired,
    /// A required field became optional: new events may lack it.
    MadeOptional,
    /// The JSON types a value may take changed (including `null`, which an
    /// `Option` adds).
    TypeChanged,
    /// An enum value or a variant of a tagged or untagged enum is new.
    VariantAdded,
    /// An enum value or variant is gone.
    VariantRemoved,
    /// A number's range (its integer width or bounds), a string's length or
    /// an array's length changed.
    RangeChanged,
    /// A string's `format` (date-time, uuid...) changed.
    FormatChanged,
    /// A difference this check does not analyse, reported as breaking.
    Other,
}

impl ChangeKind {
    /// A short, lowercase description.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeKind::FieldAdded => "field added",
            ChangeKind::FieldRemoved => "field removed",
            ChangeKind::MadeRequired => "optional field made required",
            ChangeKind::MadeOptional => "required field made optional",
            ChangeKind::TypeChanged => "type changed",
            ChangeKind::VariantAdded => "variant added",
            ChangeKind::VariantRemoved => "variant removed",
            ChangeKind::RangeChanged => "range changed",
            ChangeKind::FormatChanged => "format changed",
            ChangeKind::Other => "schema changed",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference between two schemas of a payload type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    path: String,
    kind: ChangeKind,
    breaks: Breaks,
    detail: String,
}

impl Change {
    /// Where, as a path into the payload: `$` is the payload, `$.items[].sku`
    /// a field of an array's elements, `$.payment<card>` a variant.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What changed.
    pub fn kind(&self) -> ChangeKind {
        self.kind
    }

    /// Who it breaks.
    pub fn breaks(&self) -> Breaks {
        self.breaks
    }

    /// Whether it needs a new `VERSION`.
    pub fn is_breaking(&self) -> bool {
        self.breaks.is_breaking()
    }

    /// What changed and why it breaks (or not), in words.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.path, self.detail, self.breaks)
    }
}

/// The changes from schema `old` to schema `new` of one payload type, in
/// the order found. Both are self-contained draft-07 schemas as
/// [`schema_of`](super::schema_of) writes them (their `$ref`s point into
/// their own `definitions`).
///
/// ```
/// use serde_json::json;
/// use events::contract::{compare, Breaks, ChangeKind};
///
/// let old = json!({"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]});
/// let new = json!({"type": "object", "properties": {"product": {"type": "string"}}, "required": ["product"]});
/// let changes = compare(&old, &new);
/// assert_eq!(changes[0].kind(), ChangeKind::FieldRemoved);
/// assert_eq!(changes[0].path(), "$.sku");
/// assert!(changes[0].detail().contains("renamed to `product`?"));
/// assert_eq!(changes[1].kind(), ChangeKind::FieldAdded);
/// assert_eq!(changes[1].breaks(), Breaks::OldEvents);
/// ```
pub fn compare(old: &Value, new: &Value) -> Vec<Change> {
    let mut walker = Walker {
        old_root: old,
        new_root: new,
        seen: HashSet::new(),
        changes: Vec::new(),
    };
    walker.walk("$", old, new);
    walker.changes
}

/// Keywords that only annotate: a change in them changes no data.
const ANNOTATIONS: [&str; 11] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "definitions",
];

/// Keywords the walker analyses.
const ANALYSED: [&str; 22] = [
    "$ref",
    "type",
    "enum",
    "const",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "oneOf",
    "anyOf",
    "additionalItems",
    "multipleOf",
    "pattern",
];

/// The JSON types, `integer` apart from `number` as JSON Schema has them.
const ALL_TYPES: [&str; 7] = [
    "null", "boolean", "integer", "number", "string", "array", "object",
];

/// How deep a chain of `$ref`s may go before it is taken as a loop.
const MAX_REF_CHAIN: usize = 32;

struct Walker<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    /// Pairs of schemas compared already (by address): recursive types
    /// would otherwise be walked forever.
    seen: HashSet<(usize, usize)>,
    changes: Vec<Change>,
}

/// A schema with its `null` alternative taken out: `Option<T>` is written
/// `anyOf: [T, {type: null}]` or `type: [T's type, "null"]`.
struct Shape<'a> {
    schema: &'a Map<String, Value>,
    /// The types accepted; `None` for any.
    types: Option<BTreeSet<&'static str>>,
    /// The non-null alternatives, when there are two or more.
    alternatives: Option<Vec<&'a Value>>,
}

impl<'a> Walker<'a> {
    fn push(&mut self, path: &str, kind: ChangeKind, breaks: Breaks, detail: String) {
        self.changes.push(Change {
            path: path.to_owned(),
            kind,
            breaks,
            detail,
        });
    }

    fn walk(&mut self, path: &str, old: &'a Value, new: &'a Value) {
        let (Some(old), Some(new)) = (resolve(self.old_root, old), resolve(self.new_root, new))
        else {
            if old != new {
                self.push(
                    path,
                    ChangeKind::Other,
                    Breaks::Both,
                    "a `$ref` that does not resolve changed".into(),
                );
            }
            return;
        };
        let pair = (old as *const Value as usize, new as *const Value as usize);
        if !self.seen.insert(pair) {
            return;
        }
        let (old_value, new_value) = (old, new);
        let (old, new) = (shape(self.old_root, old), shape(self.new_root, new));
        self.unanalysed(path, &old, &new);
        // A choice of several shapes (an enum with data, untagged
        // alternatives) is compared variant by variant; a single shape on
        // the other side counts as a choice of one.
        match (&old.alternatives, &new.alternatives) {
            (Some(a), Some(b)) => {
                // Only whether null is accepted: the rest is per variant.
                self.types(path, &old, &new);
                return self.alternatives(path, a, b);
            }
            (Some(a), None) => return self.alternatives(path, a, &[new_value]),
            (None, Some(b)) => return self.alternatives(path, &[old_value], b),
            (None, None) => {}
        }
        self.types(path, &old, &new);
        self.values(path, &old, &new);
        let common = |t: &str| old.accepts(t) && new.accepts(t);
        if common("integer") || common("number") {
            self.range(path, "number", &old, &new, number_bounds);
        }
        if common("string") {
            self.format(path, &old, &new);
            self.range(path, "length", &old, &new, length_bounds);
            if old.schema.get("pattern") != new.schema.get("pattern") {
                self.push(
                    path,
                    ChangeKind::Other,
                    Breaks::Both,
                    "its pattern changed".into(),
                );
            }
        }
        if common("array") {
            self.range(path, "length", &old, &new, items_bounds);
            self.items(path, &old, &new);
        }
        if common("object") {
            self.object(path, &old, &new);
        }
    }

    /// Keywords outside what the walker knows: any difference breaks.
    fn unanalysed(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let keys: BTreeSet<&String> = old.schema.keys().chain(new.schema.keys()).collect();
        for key in keys {
            let known = ANNOTATIONS.contains(&key.as_str())
                || ANALYSED.contains(&key.as_str())
                || key.starts_with("x-");
            if !known && old.schema.get(key) != new.schema.get(key) {
                self.push(
                    path,
                    ChangeKind::Other,
                    Breaks::Both,
                    format!("`{key}` changed, which this check does not analyse"),
                );
            }
        }
        if old.schema.get("multipleOf") != new.schema.get("multipleOf") {
            self.push(
                path,
                ChangeKind::Other,
                Breaks::Both,
                "its `multipleOf` changed".into(),
            );
        }
    }

    fn types(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let lost: Vec<&str> = old
            .type_list()
            .into_iter()
            .filter(|t| !new.accepts(t))
            .collect();
        let gained: Vec<&str> = new
            .type_list()
            .into_iter()
            .filter(|t| !old.accepts(t))
            .collect();
        let (detail, breaks) = match (lost.is_empty(), gained.is_empty()) {
            (true, true) => return,
            (false, false) => (
                format!(
                    "type changed from {} to {}",
                    old.describe_types(),
                    new.describe_types()
                ),
                Breaks::Both,
            ),
            (false, true) => (
                format!(
                    "no longer accepts {}: events that have it no longer decode",
                    lost.join(" or ")
                ),
                Breaks::OldEvents,
            ),
            (true, false) => (
                format!(
                    "now also accepts {}: consumers of the old schema reject it",
                    gained.join(" or ")
                ),
                Breaks::OldConsumers,
            ),
        };
        self.push(path, ChangeKind::TypeChanged, breaks, detail);
    }

    /// `enum` and `const`: the values allowed, if restricted.
    fn values(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let (old_values, new_values) = (old.values(), new.values());
        match (old_values, new_values) {
            (None, None) => {}
            (Some(values), None) => self.push(
                path,
                ChangeKind::VariantAdded,
                Breaks::OldConsumers,
                format!(
                    "no longer limited to {}: consumers of the old schema reject other values",
                    list(&values)
                ),
            ),
            (None, Some(values)) => self.push(
                path,
                ChangeKind::VariantRemoved,
                Breaks::OldEvents,
                format!(
                    "now limited to {}: events with other values no longer decode",
                    list(&values)
                ),
            ),
            (Some(old_values), Some(new_values)) => {
                for value in &old_values {
                    if !new_values.contains(value) {
                        self.push(
                            path,
                            ChangeKind::VariantRemoved,
                            Breaks::OldEvents,
                            format!("value {value} removed: events that have it no longer decode"),
                        );
                    }
                }
                for value in &new_values {
                    if !old_values.contains(value) {
                        self.push(
                            path,
                            ChangeKind::VariantAdded,
                            Breaks::OldConsumers,
                            format!("value {value} added: consumers of the old schema reject it"),
                        );
                    }
                }
            }
        }
    }

    fn format(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let format = |s: &Shape<'a>| s.schema.get("format").and_then(Value::as_str);
        // Number formats are ranges, compared there.
        if old.accepts("number") || new.accepts("number") {
            return;
        }
        let (breaks, detail) = match (format(old), format(new)) {
            (a, b) if a == b => return,
            (None, Some(b)) => (
                Breaks::OldEvents,
                format!("now must be a {b}: events with other text no longer decode"),
            ),
            (Some(a), None) => (
                Breaks::OldConsumers,
                format!("no longer a {a}: consumers of the old schema expect one"),
            ),
            (Some(a), Some(b)) => (Breaks::Both, format!("format changed from {a} to {b}")),
            (None, None) => return,
        };
        self.push(path, ChangeKind::FormatChanged, breaks, detail);
    }

    /// Compares the interval a schema allows: a number's (bounds and
    /// integer width), or a string's or array's length.
    fn range(
        &mut self,
        path: &str,
        what: &str,
        old: &Shape<'a>,
        new: &Shape<'a>,
        bounds: fn(&Map<String, Value>) -> (f64, f64, String),
    ) {
        let (old_min, old_max, old_text) = bounds(old.schema);
        let (new_min, new_max, new_text) = bounds(new.schema);
        let narrowed = new_min > old_min || new_max < old_max;
        let widened = new_min < old_min || new_max > old_max;
        let breaks = match (narrowed, widened) {
            (false, false) => return,
            (true, false) => Breaks::OldEvents,
            (false, true) => Breaks::OldConsumers,
            (true, true) => Breaks::Both,
        };
        let why = match breaks {
            Breaks::OldEvents => "events outside it no longer decode",
            Breaks::OldConsumers => "consumers of the old schema reject what is outside theirs",
            _ => "each side rejects some of the other's",
        };
        self.push(
            path,
            ChangeKind::RangeChanged,
            breaks,
            format!("{what} {old_text} became {new_text}: {why}"),
        );
    }

    fn items(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let inner = format!("{path}[]");
        match (old.schema.get("items"), new.schema.get("items")) {
            (None, None) => {}
            (Some(Value::Array(a)), Some(Value::Array(b))) => {
                if a.len() != b.len() {
                    self.push(
                        path,
                        ChangeKind::RangeChanged,
                        Breaks::Both,
                        format!("tuple of {} became a tuple of {}", a.len(), b.len()),
                    );
                }
                for (i, (a, b)) in a.iter().zip(b).enumerate() {
                    self.walk(&format!("{path}[{i}]"), a, b);
                }
            }
            (Some(Value::Array(_)), Some(_)) | (Some(_), Some(Value::Array(_))) => {
                self.push(
                    path,
                    ChangeKind::TypeChanged,
                    Breaks::Both,
                    "changed between a tuple and a list".into(),
                );
            }
            (Some(a), Some(b)) => self.walk(&inner, a, b),
            (a, b) => {
                let any = Value::Bool(true);
                let (a, b) = (a.unwrap_or(&any), b.unwrap_or(&any));
                // `&any` lives here only: compare by value, no recursion.
                if a != b {
                    let breaks = if b == &any {
                        Breaks::OldConsumers
                    } else {
                        Breaks::OldEvents
                    };
                    self.push(
                        &inner,
                        ChangeKind::TypeChanged,
                        breaks,
                        "the elements' schema was added or removed".into(),
                    );
                }
            }
        }
    }

    fn object(&mut self, path: &str, old: &Shape<'a>, new: &Shape<'a>) {
        let properties = |s: &Shape<'a>| -> &'a Map<String, Value> {
            match s.schema.get("properties") {
                Some(Value::Object(p)) => p,
                _ => empty_map(),
            }
        };
        let (old_props, new_props) = (properties(old), properties(new));
        let (old_required, new_required) = (old.required(), new.required());
        let old_closed = old.schema.get("additionalProperties") == Some(&Value::Bool(false));
        let new_closed = new.schema.get("additionalProperties") == Some(&Value::Bool(false));

        let removed: Vec<&String> = old_props
            .keys()
            .filter(|k| !new_props.contains_key(*k))
            .collect();
        let added: Vec<&String> = new_props
            .keys()
            .filter(|k| !old_props.contains_key(*k))
            .collect();
        for name in &removed {
            let renamed = added.iter().find(|a| {
                resolve(self.new_root, &new_props[a.as_str()])
                    == resolve(self.old_root, &old_props[name.as_str()])
            });
            let hint = renamed.map_or(String::new(), |a| format!(" (renamed to `{a}`?)"));
            let was = if old_required.contains(name.as_str()) {
                "required"
            } else {
                "optional"
            };
            let (breaks, why) = if new_closed {
                (
                    Breaks::Both,
                    "consumers of the old schema lose it, and events that have it no longer decode",
                )
            } else {
                (Breaks::OldConsumers, "consumers of the old schema lose it")
            };
            self.push(
                &field(path, name),
                ChangeKind::FieldRemoved,
                breaks,
                format!("{was} field removed{hint}: {why}"),
            );
        }
        for name in &added {
            let required = new_required.contains(name.as_str());
            let mut breaks = if required {
                Breaks::OldEvents
            } else {
                Breaks::Nothing
            };
            if old_closed {
                breaks = breaks.with(Breaks::OldConsumers);
            }
            let detail = match (required, old_closed) {
                (true, _) => "required field added: events already published lack it",
                (false, true) => "optional field added, but the old schema refuses unknown fields",
                (false, false) => {
                    "optional field added: old consumers ignore it, new ones do without it"
                }
            };
            self.push(
                &field(path, name),
                ChangeKind::FieldAdded,
                breaks,
                detail.into(),
            );
        }
        for (name, old_schema) in old_props {
            let Some(new_schema) = new_props.get(name) else {
                continue;
            };
            let at = field(path, name);
            match (
                old_required.contains(name.as_str()),
                new_required.contains(name.as_str()),
            ) {
                (false, true) => self.push(
                    &at,
                    ChangeKind::MadeRequired,
                    Breaks::OldEvents,
                    "optional field made required: events without it no longer decode".into(),
                ),
                (true, false) => self.push(
                    &at,
                    ChangeKind::MadeOptional,
                    Breaks::OldConsumers,
                    "required field made optional: new events may lack it, consumers of the old schema require it"
                        .into(),
                ),
                _ => {}
            }
            self.walk(&at, old_schema, new_schema);
        }
        let became_closed = !old_closed && new_closed;
        if became_closed {
            self.push(
                path,
                ChangeKind::Other,
                Breaks::OldEvents,
                "now refuses unknown fields: events with fields it does not know no longer decode"
                    .into(),
            );
        }
        // Maps: the values' schema.
        match (
            old.schema.get("additionalProperties"),
            new.schema.get("additionalProperties"),
        ) {
            (Some(a @ Value::Object(_)), Some(b @ Value::Object(_))) => {
                self.walk(&format!("{path}{{}}"), a, b)
            }
            (a, b) if a != b && !became_closed => self.push(
                path,
                ChangeKind::Other,
                Breaks::Both,
                "its `additionalProperties` changed".into(),
            ),
            _ => {}
        }
    }

    fn alternatives(&mut self, path: &str, old: &[&'a Value], new: &[&'a Value]) {
        let old_keyed = self.keyed(self.old_root, old);
        let new_keyed = self.keyed(self.new_root, new);
        for (key, old_branch) in &old_keyed {
            match new_keyed.get(key) {
                Some(new_branch) => self.walk(&format!("{path}<{key}>"), old_branch, new_branch),
                None => self.push(
                    path,
                    ChangeKind::VariantRemoved,
                    Breaks::OldEvents,
                    format!("variant `{key}` removed: events that have it no longer decode"),
                ),
            }
        }
        for key in new_keyed.keys() {
            if !old_keyed.contains_key(key) {
                self.push(
                    path,
                    ChangeKind::VariantAdded,
                    Breaks::OldConsumers,
                    format!("variant `{key}` added: consumers of the old schema reject it"),
                );
            }
        }
    }

    /// Names each alternative: its constant (a unit variant), its tag's
    /// value (`#[serde(tag = ...)]`), or its only property (an externally
    /// tagged variant); otherwise its position and shape.
    fn keyed(&self, root: &'a Value, branches: &[&'a Value]) -> BTreeMap<String, &'a Value> {
        let mut keyed = BTreeMap::new();
        for (i, branch) in branches.iter().enumerate() {
            let resolved = resolve(root, branch).unwrap_or(branch);
            let Value::Object(schema) = resolved else {
                keyed.insert(format!("#{i}"), *branch);
                continue;
            };
            // A group of unit variants: one key per value.
            if let Some(Value::Array(values)) = schema.get("enum") {
                for value in values {
                    keyed.insert(key_text(value), *branch);
                }
                continue;
            }
            if let Some(value) = schema.get("const") {
                keyed.insert(key_text(value), *branch);
                continue;
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let tag = properties.and_then(|p| {
                p.values().find_map(|v| {
                    resolve(root, v)?
                        .get("const")
                        .or_else(|| match resolve(root, v)?.get("enum") {
                            Some(Value::Array(e)) if e.len() == 1 => e.first(),
                            _ => None,
                        })
                })
            });
            if let Some(tag) = tag {
                keyed.insert(key_text(tag), *branch);
                continue;
            }
            match properties {
                Some(p) if p.len() == 1 => {
                    keyed.insert(p.keys().next().cloned().unwrap_or_default(), *branch);
                }
                _ => {
                    let types = shape(root, resolved).describe_types();
                    keyed.insert(format!("#{i} {types}"), *branch);
                }
            }
        }
        keyed
    }
}

/// An empty map that outlives any schema (for a schema without
/// `properties`, or a boolean schema).
fn empty_map<'a>() -> &'a Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

fn field(path: &str, name: &str) -> String {
    format!("{path}.{name}")
}

fn key_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(values: &[Value]) -> String {
    let texts: Vec<String> = values.iter().map(Value::to_string).collect();
    texts.join(", ")
}

/// Follows `$ref`s into `root` (`#/definitions/Name`, `#`); `None` for one
/// that does not resolve, or a chain too long to be anything but a loop.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> Option<&'a Value> {
    for _ in 0..MAX_REF_CHAIN {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Some(schema);
        };
        let pointer = percent_encoding::percent_decode_str(reference.strip_prefix('#')?)
            .decode_utf8()
            .ok()?;
        schema = root.pointer(&pointer)?;
    }
    None
}

fn shape<'a>(root: &'a Value, schema: &'a Value) -> Shape<'a> {
    let map = match schema {
        Value::Object(map) => map,
        // `true` accepts anything, `false` nothing.
        Value::Bool(accepts) => {
            return Shape {
                schema: empty_map(),
                types: if *accepts {
                    None
                } else {
                    Some(BTreeSet::new())
                },
                alternatives: None,
            }
        }
        _ => empty_map(),
    };
    let is_null = |v: &Value| {
        let v = resolve(root, v).unwrap_or(v);
        v.get("type") == Some(&Value::String("null".into())) || v.get("const") == Some(&Value::Null)
    };
    let branches = map
        .get("anyOf")
        .or_else(|| map.get("oneOf"))
        .and_then(Value::as_array);
    if let Some(branches) = branches {
        let non_null: Vec<&Value> = branches.iter().filter(|b| !is_null(b)).collect();
        let nullable = non_null.len() < branches.len();
        if non_null.len() == 1 {
            // `Option<T>`: T's shape, with null added.
            let inner = resolve(root, non_null[0]).unwrap_or(non_null[0]);
            let mut inner = shape(root, inner);
            if nullable {
                if let Some(types) = &mut inner.types {
                    types.insert("null");
                }
            }
            return inner;
        }
        let mut types: BTreeSet<&'static str> = BTreeSet::new();
        if nullable {
            types.insert("null");
        }
        return Shape {
            schema: map,
            // The alternatives' own types are compared per variant.
            types: Some(types),
            alternatives: Some(non_null),
        };
    }
    let mut types = types_of(map.get("type"));
    if types.is_none() {
        // Without `type`, the values or properties tell.
        let from_values =
            |values: &[Value]| -> BTreeSet<&'static str> { values.iter().map(json_type).collect() };
        if let Some(Value::Array(values)) = map.get("enum") {
            types = Some(from_values(values));
        } else if let Some(value) = map.get("const") {
            types = Some(from_values(std::slice::from_ref(value)));
        } else if map.contains_key("properties") {
            types = Some(BTreeSet::from(["object"]));
        }
    }
    Shape {
        schema: map,
        types,
        alternatives: None,
    }
}

fn types_of(value: Option<&Value>) -> Option<BTreeSet<&'static str>> {
    let names: Vec<&str> = match value? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(
        names
            .into_iter()
            .filter_map(|n| ALL_TYPES.iter().find(|t| **t == n).copied())
            .collect(),
    )
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Shape<'_> {
    fn accepts(&self, t: &str) -> bool {
        match &self.types {
            None => true,
            Some(types) => types.contains(t) || (t == "integer" && types.contains("number")),
        }
    }

    fn type_list(&self) -> Vec<&'static str> {
        match &self.types {
            None => ALL_TYPES.to_vec(),
            Some(types) => types.iter().copied().collect(),
        }
    }

    fn describe_types(&self) -> String {
        match &self.types {
            None => "any".into(),
            Some(types) if types.is_empty() => "nothing".into(),
            Some(types) => types.iter().copied().collect::<Vec<_>>().join(" or "),
        }
    }

    fn required(&self) -> BTreeSet<&str> {
        match self.schema.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => BTreeSet::new(),
        }
    }

    fn values(&self) -> Option<Vec<Value>> {
        if let Some(Value::Array(values)) = self.schema.get("enum") {
            return Some(values.clone());
        }
        self.schema.get("const").map(|v| vec![v.clone()])
    }
}

/// The interval of numbers a schema allows: the integer width its `format`
/// names (schemars writes `uint32`, `int64`...), narrowed by its bounds.
fn number_bounds(schema: &Map<String, Value>) -> (f64, f64, String) {
    let format = schema.get("format").and_then(Value::as_str);
    let (mut min, mut max) = match format {
        Some("int8") => (i8::MIN as f64, i8::MAX as f64),
        Some("int16") => (i16::MIN as f64, i16::MAX as f64),
        Some("int32") => (i32::MIN as f64, i32::MAX as f64),
        Some("int64" | "int") => (i64::MIN as f64, i64::MAX as f64),
        Some("int128") => (i128::MIN as f64, i128::MAX as f64),
        Some("uint8") => (0.0, u8::MAX as f64),
        Some("uint16") => (0.0, u16::MAX as f64),
        Some("uint32") => (0.0, u32::MAX as f64),
        Some("uint64" | "uint") => (0.0, u64::MAX as f64),
        Some("uint128") => (0.0, u128::MAX as f64),
        Some("float") => (f32::MIN as f64, f32::MAX as f64),
        _ => (f64::NEG_INFINITY, f64::INFINITY),
    };
    let format_range = (min, max);
    let bound = |name: &str| schema.get(name).and_then(Value::as_f64);
    if let Some(m) = bound("minimum") {
        min = min.max(m);
    }
    if let Some(m) = bound("exclusiveMinimum") {
        min = min.max(m + f64::EPSILON * m.abs().max(1.0));
    }
    if let Some(m) = bound("maximum") {
        max = max.min(m);
    }
    if let Some(m) = bound("exclusiveMaximum") {
        max = max.min(m - f64::EPSILON * m.abs().max(1.0));
    }
    // Name the width when the bounds are only its own (schemars writes
    // `minimum: 0` beside `uint32`).
    let text = match format {
        Some(f) if (min, max) == format_range => f.to_owned(),
        _ => interval(min, max),
    };
    (min, max, text)
}

fn counted(schema: &Map<String, Value>, min_key: &str, max_key: &str) -> (f64, f64, String) {
    let min = schema.get(min_key).and_then(Value::as_f64).unwrap_or(0.0);
    let max = schema
        .get(max_key)
        .and_then(Value::as_f64)
        .unwrap_or(f64::INFINITY);
    (min, max, interval(min, max))
}

fn length_bounds(schema: &Map<String, Value>) -> (f64, f64, String) {
    counted(schema, "minLength", "maxLength")
}

fn items_bounds(schema: &Map<String, Value>) -> (f64, f64, String) {
    counted(schema, "minItems", "maxItems")
}

fn interval(min: f64, max: f64) -> String {
    let end = |v: f64| {
        if v.is_infinite() {
            "..".to_owned()
        } else {
            format!("{v}")
        }
    };
    match (min.is_infinite(), max.is_infinite()) {
        (true, true) => "unbounded".into(),
        _ => format!("[{}, {}]", end(min), end(max)),
    }
}

#[cfg(test)]
mod tests;
