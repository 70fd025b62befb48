#![allow(dead_code)] // the types exist for their schemas

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::*;
use crate::consumer::{Consumer, Context, HandlerError};
use crate::{ErrorKind, Event};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Placed {
    order_id: String,
    line: Line,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
}

impl EventPayload for Placed {
    const TYPE: &'static str = "orders.placed";
    const VERSION: u32 = 2;
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Reserved {
    order_id: String,
}

impl EventPayload for Reserved {
    const TYPE: &'static str = "inventory.reserved";
}

async fn on_reserved(_: Event<Reserved>, _: Context<()>) -> Result<(), HandlerError> {
    Ok(())
}

fn consumer(bus: &Bus) -> Consumer<()> {
    Consumer::new(bus, "orders").unwrap().handle(on_reserved)
}

#[test]
fn channels_operations_and_schemas_come_from_what_the_service_does() {
    let bus = Bus::memory("orders");
    let doc = AsyncApi::new("orders", "1.2.3")
        .bus(&bus)
        .schema::<Reserved>()
        .publishes::<Placed>()
        .consumer(&consumer(&bus))
        .build()
        .unwrap()
        .into_value();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], "1.2.3");
    let channels: Vec<&String> = doc["channels"].as_object().unwrap().keys().collect();
    assert_eq!(
        channels,
        [
            "deadletter.orders",
            "inventory.reserved.v1",
            "orders.placed.v2"
        ]
    );
    let placed = &doc["channels"]["orders.placed.v2"];
    assert_eq!(placed["address"], "events.orders.placed");
    assert_eq!(placed["bindings"]["nats"], json!({}));
    let structured = &placed["messages"]["structured"];
    assert_eq!(structured["contentType"], "application/cloudevents+json");
    let envelope = &structured["payload"]["allOf"][1]["properties"];
    assert_eq!(envelope["type"]["const"], "orders.placed.v2");
    assert_eq!(envelope["data"]["$ref"], "#/components/schemas/Placed");
    let binary = &placed["messages"]["binary"];
    assert_eq!(binary["payload"]["$ref"], "#/components/schemas/Placed");
    assert_eq!(
        binary["headers"]["allOf"][1]["properties"]["ce-type"]["const"],
        "orders.placed.v2"
    );
    // Subschemas are components too, referenced from the payload's.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Placed"]["properties"]["line"]["$ref"],
        "#/components/schemas/Line"
    );
    assert_eq!(schemas["Line"]["required"], json!(["sku"]));
    assert!(schemas[BINARY_HEADERS]["properties"]["ce-correlationid"].is_object());

    let operations = doc["operations"].as_object().unwrap();
    let ids: Vec<&String> = operations.keys().collect();
    assert_eq!(
        ids,
        [
            "orders.dead_letter",
            "orders.receive.inventory.reserved.v1",
            "send.orders.placed.v2"
        ]
    );
    let send = &operations["send.orders.placed.v2"];
    assert_eq!(send["action"], "send");
    assert_eq!(
        send["messages"],
        json!([{"$ref": "#/channels/orders.placed.v2/messages/structured"}])
    );
    let receive = &operations["orders.receive.inventory.reserved.v1"];
    assert_eq!(receive["action"], "receive");
    assert_eq!(receive["bindings"]["nats"]["queue"], "orders");
    assert_eq!(receive["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        doc["channels"]["deadletter.orders"]["address"],
        "deadletter.events.orders"
    );
}

#[test]
fn a_binary_bus_publishes_the_binary_message_under_its_prefix() {
    let bus = Bus::builder(crate::backend::memory::MemoryTransport::new())
        .source("orders")
        .prefix("shop.prod")
        .content_mode(ContentMode::Binary)
        .build()
        .unwrap();
    let doc = AsyncApi::new("orders", "1")
        .bus(&bus)
        .publishes::<Placed>()
        .build()
        .unwrap()
        .into_value();
    assert_eq!(
        doc["channels"]["orders.placed.v2"]["address"],
        "shop.prod.orders.placed"
    );
    assert_eq!(
        doc["operations"]["send.orders.placed.v2"]["messages"][0]["$ref"],
        "#/channels/orders.placed.v2/messages/binary"
    );
    assert!(
        doc["components"]["schemas"]
            .get(DEAD_LETTER_HEADERS)
            .is_none(),
        "no consumer, no dead letters"
    );
}

#[test]
fn a_handled_type_without_a_schema_is_refused_with_the_consumer_named() {
    let bus = Bus::memory("orders");
    let err = AsyncApi::new("orders", "1")
        .consumer(&consumer(&bus))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains(
            "consumer `orders` handles inventory.reserved, which the catalog has no schema for"
        ),
        "{err}"
    );
}

#[test]
fn a_handled_type_with_two_versions_in_the_catalog_is_refused() {
    #[derive(Serialize, Deserialize, JsonSchema)]
    struct ReservedV2 {
        order_id: String,
    }
    impl EventPayload for ReservedV2 {
        const TYPE: &'static str = "inventory.reserved";
        const VERSION: u32 = 2;
    }
    let bus = Bus::memory("orders");
    let err = AsyncApi::new("orders", "1")
        .schema::<Reserved>()
        .schema::<ReservedV2>()
        .consumer(&consumer(&bus))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("at v1 and v2"), "{err}");
}

#[test]
fn server_urls_lose_their_credentials_and_other_schemes_are_refused() {
    let doc = AsyncApi::new("orders", "1")
        .server("prod", "nats://alice:s3cret@nats.internal:4222")
        .server("edge", "tls://edge:4443/")
        .server("bare", "127.0.0.1:4222")
        .build()
        .unwrap();
    let text = doc.to_json_pretty();
    assert!(
        !text.contains("s3cret") && !text.contains("alice"),
        "{text}"
    );
    let servers = &doc.as_value()["servers"];
    assert_eq!(
        servers["prod"],
        json!({"host": "nats.internal:4222", "protocol": "nats"})
    );
    assert_eq!(servers["edge"]["host"], "edge:4443");
    assert_eq!(servers["bare"]["host"], "127.0.0.1:4222");

    for url in ["http://nats:4222", "nats://", "nats://host/path"] {
        let err = AsyncApi::new("orders", "1")
            .server("bad", url)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
    }
}

/// A payload whose schema name AsyncAPI would refuse as a component key.
#[derive(Serialize, Deserialize)]
struct Oddly {
    order_id: String,
}

impl JsonSchema for Oddly {
    fn schema_name() -> Cow<'static, str> {
        "Envelope<Oddly, v2>".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "object", "properties": { "order_id": { "type": "string" } } })
    }
}

impl EventPayload for Oddly {
    const TYPE: &'static str = "orders.oddly";
}

#[test]
fn schema_names_asyncapi_refuses_are_renamed_and_their_references_follow() {
    let doc = AsyncApi::new("orders", "1")
        .publishes::<Oddly>()
        .build()
        .unwrap()
        .into_value();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.contains_key("Envelope_Oddly__v2_"), "{schemas:?}");
    assert!(schemas.keys().all(|k| k
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))));
    assert_eq!(
        doc["channels"]["orders.oddly.v1"]["messages"]["binary"]["payload"]["$ref"],
        "#/components/schemas/Envelope_Oddly__v2_"
    );
}

#[test]
fn the_document_prints_as_json() {
    let doc = AsyncApi::new("orders", "1")
        .description("Orders.")
        .publishes::<Reserved>()
        .build()
        .unwrap();
    let parsed: Value = serde_json::from_str(&doc.to_string()).unwrap();
    assert_eq!(&parsed, doc.as_value());
    assert_eq!(parsed["info"]["description"], "Orders.");
}
