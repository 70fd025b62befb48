//! One test per kind of change, each from two versions of a Rust type.

// The types exist for their schemas; their fields are never read.
#![allow(dead_code)]

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::*;
use crate::contract::schema::settings;

fn schema<T: JsonSchema>() -> Value {
    settings()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

fn changes<Old: JsonSchema, New: JsonSchema>() -> Vec<Change> {
    compare(&schema::<Old>(), &schema::<New>())
}

/// The one change at `path`, or a panic listing them all.
fn only(changes: &[Change], path: &str) -> Change {
    let at: Vec<&Change> = changes.iter().filter(|c| c.path() == path).collect();
    match at[..] {
        [one] => one.clone(),
        _ => panic!("expected one change at {path}, got {changes:#?}"),
    }
}

fn breaking(changes: &[Change]) -> Vec<&Change> {
    changes.iter().filter(|c| c.is_breaking()).collect()
}

mod base {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Order {
        pub(super) order_id: String,
        pub(super) quantity: u32,
        pub(super) coupon: Option<String>,
    }
}

#[test]
fn an_unchanged_type_has_no_changes() {
    assert_eq!(changes::<base::Order, base::Order>(), []);
}

#[test]
fn a_new_optional_field_is_compatible() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: String,
        quantity: u32,
        coupon: Option<String>,
        note: Option<String>,
        #[serde(default)]
        gift: bool,
    }
    let changes = changes::<base::Order, Order>();
    assert!(breaking(&changes).is_empty(), "{changes:#?}");
    let note = only(&changes, "$.note");
    assert_eq!(note.kind(), ChangeKind::FieldAdded);
    assert_eq!(note.breaks(), Breaks::Nothing);
    assert_eq!(only(&changes, "$.gift").breaks(), Breaks::Nothing);
}

#[test]
fn a_new_required_field_breaks_old_events() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: String,
        quantity: u32,
        coupon: Option<String>,
        customer_id: String,
    }
    let change = only(&changes::<base::Order, Order>(), "$.customer_id");
    assert_eq!(change.kind(), ChangeKind::FieldAdded);
    assert_eq!(change.breaks(), Breaks::OldEvents);
    assert!(
        change.detail().contains("already published lack it"),
        "{change}"
    );
}

#[test]
fn a_removed_field_breaks_old_consumers_even_when_optional() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: String,
        quantity: u32,
    }
    let changes = changes::<base::Order, Order>();
    let change = only(&changes, "$.coupon");
    assert_eq!(change.kind(), ChangeKind::FieldRemoved);
    assert_eq!(change.breaks(), Breaks::OldConsumers);
    assert!(
        change.detail().starts_with("optional field removed"),
        "{change}"
    );
    assert_eq!(changes.len(), 1, "{changes:#?}");
}

#[test]
fn a_renamed_field_is_a_removal_and_a_required_addition_with_a_hint() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        id: String,
        quantity: u32,
        coupon: Option<String>,
    }
    let changes = changes::<base::Order, Order>();
    let removed = only(&changes, "$.order_id");
    assert_eq!(removed.kind(), ChangeKind::FieldRemoved);
    assert!(removed.detail().contains("(renamed to `id`?)"), "{removed}");
    let added = only(&changes, "$.id");
    assert_eq!(added.kind(), ChangeKind::FieldAdded);
    assert_eq!(added.breaks(), Breaks::OldEvents);
}

#[test]
fn a_changed_type_breaks_both_sides() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: u64,
        quantity: u32,
        coupon: Option<String>,
    }
    let change = only(&changes::<base::Order, Order>(), "$.order_id");
    assert_eq!(change.kind(), ChangeKind::TypeChanged);
    assert_eq!(change.breaks(), Breaks::Both);
    assert_eq!(
        change.detail(),
        "type changed from string to integer",
        "{change}"
    );
}

#[test]
fn an_optional_field_made_required_breaks_old_events() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: String,
        quantity: u32,
        coupon: String,
    }
    let changes = changes::<base::Order, Order>();
    let kinds: Vec<ChangeKind> = changes
        .iter()
        .filter(|c| c.path() == "$.coupon")
        .map(Change::kind)
        .collect();
    assert_eq!(
        kinds,
        [ChangeKind::MadeRequired, ChangeKind::TypeChanged],
        "{changes:#?}"
    );
    assert!(changes.iter().all(|c| c.breaks() == Breaks::OldEvents));
    assert!(changes[1].detail().contains("no longer accepts null"));
}

#[test]
fn a_required_field_made_optional_breaks_old_consumers() {
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        order_id: String,
        quantity: Option<u32>,
        coupon: Option<String>,
    }
    let changes = changes::<base::Order, Order>();
    assert!(!changes.is_empty());
    assert!(changes.iter().all(|c| c.path() == "$.quantity"));
    assert_eq!(changes[0].kind(), ChangeKind::MadeOptional);
    assert!(changes.iter().all(|c| c.breaks() == Breaks::OldConsumers));
}

#[test]
fn integer_width_narrowed_breaks_old_events_and_widened_breaks_old_consumers() {
    #[derive(Deserialize, JsonSchema)]
    struct Narrow {
        order_id: String,
        quantity: u16,
        coupon: Option<String>,
    }
    #[derive(Deserialize, JsonSchema)]
    struct Wide {
        order_id: String,
        quantity: u64,
        coupon: Option<String>,
    }
    let narrowed = only(&changes::<base::Order, Narrow>(), "$.quantity");
    assert_eq!(narrowed.kind(), ChangeKind::RangeChanged);
    assert_eq!(narrowed.breaks(), Breaks::OldEvents);
    assert!(
        narrowed.detail().contains("uint32 became uint16"),
        "{narrowed}"
    );
    let widened = only(&changes::<base::Order, Wide>(), "$.quantity");
    assert_eq!(widened.breaks(), Breaks::OldConsumers);
    // A signed type takes negatives the unsigned one refused, and loses
    // the top half: both sides.
    #[derive(Deserialize, JsonSchema)]
    struct Signed {
        order_id: String,
        quantity: i32,
        coupon: Option<String>,
    }
    let signed = only(&changes::<base::Order, Signed>(), "$.quantity");
    assert_eq!(signed.breaks(), Breaks::Both);
}

mod status_v1 {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    pub(super) enum Status {
        Placed,
        Paid,
        Shipped,
    }

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Order {
        pub(super) status: Status,
    }
}

#[test]
fn an_enum_value_removed_breaks_old_events_and_one_added_breaks_old_consumers() {
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Status {
        Placed,
        Paid,
        Cancelled,
    }
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        status: Status,
    }
    let changes = changes::<status_v1::Order, Order>();
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert_eq!(changes[0].kind(), ChangeKind::VariantRemoved);
    assert_eq!(changes[0].path(), "$.status");
    assert_eq!(changes[0].breaks(), Breaks::OldEvents);
    assert!(
        changes[0].detail().contains("\"shipped\""),
        "{}",
        changes[0]
    );
    assert_eq!(changes[1].kind(), ChangeKind::VariantAdded);
    assert_eq!(changes[1].breaks(), Breaks::OldConsumers);
    assert!(
        changes[1].detail().contains("\"cancelled\""),
        "{}",
        changes[1]
    );
}

mod payment_v1 {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "method", rename_all = "snake_case")]
    pub(super) enum Payment {
        Card { last4: String },
        Invoice { due_days: u32 },
        Cash,
    }

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Order {
        pub(super) payment: Payment,
    }
}

#[test]
fn a_tagged_variant_removed_or_changed_is_named() {
    #[derive(Deserialize, JsonSchema)]
    #[serde(tag = "method", rename_all = "snake_case")]
    enum Payment {
        Card { last4: u16 },
        Cash,
        Voucher { code: String },
    }
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        payment: Payment,
    }
    let changes = changes::<payment_v1::Order, Order>();
    let card = only(&changes, "$.payment<card>.last4");
    assert_eq!(card.kind(), ChangeKind::TypeChanged);
    let at_payment: Vec<(ChangeKind, &str)> = changes
        .iter()
        .filter(|c| c.path() == "$.payment")
        .map(|c| (c.kind(), c.detail()))
        .collect();
    assert_eq!(at_payment.len(), 2, "{changes:#?}");
    assert_eq!(at_payment[0].0, ChangeKind::VariantRemoved);
    assert!(at_payment[0].1.contains("`invoice`"));
    assert_eq!(at_payment[1].0, ChangeKind::VariantAdded);
    assert!(at_payment[1].1.contains("`voucher`"));
}

#[test]
fn an_externally_tagged_variant_added_to_unit_variants_is_named() {
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "snake_case")]
    enum Status {
        Placed,
        Paid,
        Shipped,
        Held { reason: String },
    }
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        status: Status,
    }
    let changes = changes::<status_v1::Order, Order>();
    let added = only(&changes, "$.status");
    assert_eq!(added.kind(), ChangeKind::VariantAdded);
    assert!(added.detail().contains("`held`"), "{added}");
}

mod nested_v1 {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Address {
        pub(super) street: String,
        pub(super) city: String,
    }

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Line {
        pub(super) sku: String,
        pub(super) quantity: u32,
    }

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Order {
        pub(super) address: Address,
        pub(super) lines: Vec<Line>,
        pub(super) tags: std::collections::BTreeMap<String, String>,
    }
}

#[test]
fn changes_inside_referenced_types_arrays_and_maps_have_their_paths() {
    #[derive(Deserialize, JsonSchema)]
    struct Address {
        street: String,
    }
    #[derive(Deserialize, JsonSchema)]
    struct Line {
        sku: String,
        quantity: String,
    }
    #[derive(Deserialize, JsonSchema)]
    struct Order {
        address: Address,
        lines: Vec<Line>,
        tags: std::collections::BTreeMap<String, u32>,
    }
    let changes = changes::<nested_v1::Order, Order>();
    assert_eq!(
        only(&changes, "$.address.city").kind(),
        ChangeKind::FieldRemoved
    );
    assert_eq!(
        only(&changes, "$.lines[].quantity").kind(),
        ChangeKind::TypeChanged
    );
    assert_eq!(only(&changes, "$.tags{}").kind(), ChangeKind::TypeChanged);
    assert_eq!(changes.len(), 3, "{changes:#?}");
}

#[test]
fn a_value_made_nullable_breaks_old_consumers() {
    let old = json!({
        "type": "object",
        "properties": {"address": {"$ref": "#/definitions/Address"}},
        "required": ["address"],
        "definitions": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}},
    });
    // Still required, but `null` is accepted now.
    let mut new = old.clone();
    new["properties"]["address"] =
        json!({"anyOf": [{"$ref": "#/definitions/Address"}, {"type": "null"}]});
    let change = only(&compare(&old, &new), "$.address");
    assert_eq!(change.kind(), ChangeKind::TypeChanged);
    assert_eq!(change.breaks(), Breaks::OldConsumers);
    assert!(
        change.detail().contains("now also accepts null"),
        "{change}"
    );
    // And back: null no longer accepted.
    let back = only(&compare(&new, &old), "$.address");
    assert_eq!(back.breaks(), Breaks::OldEvents);
}

mod tree {
    use super::*;

    #[derive(Deserialize, JsonSchema)]
    pub(super) struct Node {
        pub(super) name: String,
        pub(super) children: Vec<Node>,
    }
}

#[test]
fn recursive_types_are_compared_once_and_their_changes_found() {
    assert_eq!(changes::<tree::Node, tree::Node>(), []);
    #[derive(Deserialize, JsonSchema)]
    struct Node {
        name: u8,
        children: Vec<Node>,
    }
    let changes = changes::<tree::Node, Node>();
    assert_eq!(only(&changes, "$.name").kind(), ChangeKind::TypeChanged);
}

#[test]
fn a_string_format_added_breaks_old_events() {
    let old =
        json!({"type": "object", "properties": {"at": {"type": "string"}}, "required": ["at"]});
    let new = json!({"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}, "required": ["at"]});
    let change = only(&compare(&old, &new), "$.at");
    assert_eq!(change.kind(), ChangeKind::FormatChanged);
    assert_eq!(change.breaks(), Breaks::OldEvents);
    let back = only(&compare(&new, &old), "$.at");
    assert_eq!(back.breaks(), Breaks::OldConsumers);
}

#[test]
fn a_keyword_the_check_does_not_analyse_is_breaking_when_it_changes() {
    let old = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let new = json!({"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}});
    let change = only(&compare(&old, &new), "$");
    assert_eq!(change.kind(), ChangeKind::Other);
    assert_eq!(change.breaks(), Breaks::Both);
    assert!(change.detail().contains("`not`"), "{change}");
}

#[test]
fn descriptions_and_titles_are_not_changes() {
    let old = json!({"type": "object", "title": "A", "properties": {"a": {"type": "string"}}});
    let new = json!({"type": "object", "title": "B", "description": "d", "properties": {"a": {"type": "string", "description": "x"}}});
    assert_eq!(compare(&old, &new), []);
}

#[test]
fn a_ref_that_does_not_resolve_is_a_breaking_change_not_a_panic() {
    let old = json!({"$ref": "#/definitions/Missing"});
    let new = json!({"$ref": "#/definitions/Other"});
    let change = only(&compare(&old, &new), "$");
    assert_eq!(change.kind(), ChangeKind::Other);
    // A loop of references ends too.
    let looped =
        json!({"$ref": "#/definitions/A", "definitions": {"A": {"$ref": "#/definitions/A"}}});
    assert_eq!(compare(&looped, &looped), []);
}

#[test]
fn display_of_every_kind_and_side_is_lowercase_without_a_period() {
    let kinds = [
        ChangeKind::FieldAdded,
        ChangeKind::FieldRemoved,
        ChangeKind::MadeRequired,
        ChangeKind::MadeOptional,
        ChangeKind::TypeChanged,
        ChangeKind::VariantAdded,
        ChangeKind::VariantRemoved,
        ChangeKind::RangeChanged,
        ChangeKind::FormatChanged,
        ChangeKind::Other,
    ];
    let sides = [
        Breaks::Nothing,
        Breaks::OldEvents,
        Breaks::OldConsumers,
        Breaks::Both,
    ];
    let texts = kinds
        .iter()
        .map(ToString::to_string)
        .chain(sides.iter().map(ToString::to_string));
    for text in texts {
        assert_eq!(text, text.to_lowercase(), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
    #[derive(JsonSchema)]
    struct Order {
        quantity: u32,
        coupon: Option<String>,
    }
    let change = only(&changes::<base::Order, Order>(), "$.order_id");
    assert_eq!(
        change.to_string(),
        "$.order_id: required field removed: consumers of the old schema lose it (breaks consumers of the old schema)"
    );
}
