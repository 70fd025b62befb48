use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::*;
use crate::backend::memory::{MemoryConfig, MemoryTransport};
use crate::transport::{Message, Subject};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    order_id: String,
}
impl EventPayload for Placed {
    const TYPE: &'static str = "orders.placed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reserved {
    order_id: String,
}
impl EventPayload for Reserved {
    const TYPE: &'static str = "stock.reserved";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BadName {}
impl EventPayload for BadName {
    const TYPE: &'static str = "Not Valid";
}

async fn next<T: EventPayload>(sub: &mut Subscriber<T>) -> Result<Delivery<T>, DeliveryError> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery within 5 s")
        .expect("subscription open")
}

#[tokio::test]
async fn typed_events_round_trip_in_both_modes() {
    for mode in [ContentMode::Structured, ContentMode::Binary] {
        let bus = Bus::builder(MemoryTransport::new())
            .source("orders")
            .content_mode(mode)
            .build()
            .unwrap();
        let mut sub = bus.subscribe::<Placed>().await.unwrap();
        let event = bus
            .event(Placed {
                order_id: "o-1".into(),
            })
            .with_subject("o-1");
        bus.publish(&event).await.unwrap();
        let d = next(&mut sub).await.unwrap();
        assert_eq!(d.event(), &event);
        assert_eq!(d.attempt(), 1);
        assert_eq!(d.wire_version(), 1);
        assert_eq!(d.message().subject.as_str(), "events.orders.placed");
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn a_subscriber_only_sees_its_type() {
    let bus = Bus::memory("svc");
    let mut placed = bus.subscribe::<Placed>().await.unwrap();
    bus.publish(&bus.event(Reserved {
        order_id: "r".into(),
    }))
    .await
    .unwrap();
    bus.publish(&bus.event(Placed {
        order_id: "p".into(),
    }))
    .await
    .unwrap();
    assert_eq!(next(&mut placed).await.unwrap().payload().order_id, "p");
}

#[tokio::test]
async fn an_undecodable_message_is_an_error_that_keeps_the_raw_delivery() {
    let bus = Bus::memory("svc");
    let mut sub = bus.subscribe::<Placed>().await.unwrap();
    let subject = Subject::parse("events.orders.placed").unwrap();
    bus.transport()
        .publish(Message::new(subject, &b"{not json"[..]))
        .await
        .unwrap();
    let err = next(&mut sub).await.unwrap_err();
    assert_eq!(err.error().kind(), ErrorKind::Decode);
    let raw = err.raw().expect("raw delivery kept");
    assert_eq!(&raw.message().payload[..], b"{not json");
    assert!(
        err.to_string()
            .starts_with("delivery on `events.orders.placed` failed: decode failed"),
        "{err}"
    );
    // It can still be settled, so it is not lost or stuck.
    let (_, raw) = err.into_parts();
    raw.unwrap().nack(None).await.unwrap();
    let again = next(&mut sub).await.unwrap_err();
    assert_eq!(again.raw().unwrap().attempt(), 2);
    again.into_parts().1.unwrap().term().await.unwrap();
}

#[tokio::test]
async fn publish_checks_names_and_size_before_sending() {
    let bus = Bus::builder(MemoryTransport::with_config(
        MemoryConfig::new().max_message_size(512),
    ))
    .source("svc")
    .build()
    .unwrap();
    let mut sub = bus.subscribe::<Placed>().await.unwrap();
    let err = bus
        .publish(&bus.event(Placed {
            order_id: "x".repeat(600),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.detail().contains("at most 512"), "{err}");
    let err = bus.publish(&bus.event(BadName {})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = bus.subscribe::<BadName>().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        tokio::time::timeout(Duration::from_millis(20), sub.next())
            .await
            .is_err(),
        "nothing was sent"
    );
}

#[tokio::test]
async fn a_missing_capability_fails_the_subscription_at_start() {
    let bus = Bus::memory("svc");
    let err = bus
        .subscribe::<Placed>()
        .durable("inventory")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.detail().contains("durable subscriptions"), "{err}");
    let err = bus
        .subscribe::<Placed>()
        .require(Capability::Persistent)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let err = bus
        .subscribe::<Placed>()
        .queue_group("bad group")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn queue_groups_and_raw_pattern_subscriptions_work_through_the_bus() {
    let bus = Bus::memory("svc");
    let mut w1 = bus.subscribe::<Placed>().queue_group("w").await.unwrap();
    let mut w2 = bus.subscribe::<Placed>().queue_group("w").await.unwrap();
    let mut all_orders = bus.subscribe_raw("orders.>").await.unwrap();
    for i in 0..4 {
        bus.publish(&bus.event(Placed {
            order_id: i.to_string(),
        }))
        .await
        .unwrap();
    }
    bus.publish(&bus.event(Reserved {
        order_id: "r".into(),
    }))
    .await
    .unwrap();
    let mut ids = Vec::new();
    for w in [&mut w1, &mut w2] {
        while let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(20), w.next()).await
        {
            ids.push(d.payload().order_id.clone());
            d.ack().await.unwrap();
        }
    }
    ids.sort();
    assert_eq!(ids, ["0", "1", "2", "3"]);
    for i in 0..4 {
        let raw = all_orders.next().await.unwrap().unwrap();
        assert_eq!(raw.metadata().event_type(), "orders.placed");
        let typed = raw
            .decode::<Placed>(&Upcasters::new(), VersionPolicy::Reject)
            .unwrap();
        assert_eq!(typed.payload().order_id, i.to_string());
        typed.ack().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(20), all_orders.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_reaction_carries_correlation_and_causation_through_the_bus() {
    let orders = Bus::memory("orders");
    let inventory = Bus::builder_shared(orders.transport().clone())
        .source("inventory")
        .build()
        .unwrap();
    let mut placed_sub = inventory.subscribe::<Placed>().await.unwrap();
    let mut reserved_sub = orders.subscribe::<Reserved>().await.unwrap();

    let placed = orders.event(Placed {
        order_id: "o".into(),
    });
    orders.publish(&placed).await.unwrap();
    let got = next(&mut placed_sub).await.unwrap();
    let reaction = inventory.reaction(
        got.event(),
        Reserved {
            order_id: "o".into(),
        },
    );
    inventory.publish(&reaction).await.unwrap();
    got.ack().await.unwrap();

    let reserved = next(&mut reserved_sub).await.unwrap();
    assert_eq!(reserved.metadata().source(), "inventory");
    assert_eq!(
        reserved.metadata().correlation_id(),
        Some(placed.metadata.id())
    );
    assert_eq!(
        reserved.metadata().causation_id(),
        Some(placed.metadata.id())
    );
}

#[tokio::test]
async fn publish_all_reports_one_result_per_event() {
    let bus = Bus::builder(MemoryTransport::with_config(
        MemoryConfig::new().max_message_size(400),
    ))
    .source("svc")
    .build()
    .unwrap();
    let mut sub = bus.subscribe::<Placed>().await.unwrap();
    let events = vec![
        bus.event(Placed {
            order_id: "a".into(),
        }),
        bus.event(Placed {
            order_id: "x".repeat(500),
        }),
        bus.event(Placed {
            order_id: "b".into(),
        }),
    ];
    let results = bus.publish_all(&events).await;
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    assert!(results[2].is_ok());
    assert_eq!(next(&mut sub).await.unwrap().payload().order_id, "a");
    assert_eq!(next(&mut sub).await.unwrap().payload().order_id, "b");
}

#[tokio::test]
async fn close_ends_subscribers_and_refuses_publishes() {
    let bus = Bus::memory("svc");
    let mut sub = bus.subscribe::<Placed>().await.unwrap();
    bus.publish(&bus.event(Placed {
        order_id: "a".into(),
    }))
    .await
    .unwrap();
    bus.close().await.unwrap();
    assert!(next(&mut sub).await.is_ok());
    assert!(sub.next().await.is_none());
    let err = bus
        .publish(&bus.event(Placed {
            order_id: "b".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[test]
fn builder_rejects_an_invalid_prefix_or_source() {
    assert!(Bus::builder(MemoryTransport::new())
        .prefix("a b")
        .build()
        .is_err());
    assert!(Bus::builder(MemoryTransport::new())
        .source("")
        .build()
        .is_err());
    let bus = Bus::builder(MemoryTransport::new())
        .prefix("acme.events")
        .build()
        .unwrap();
    assert_eq!(
        bus.codec().subject_for("a.b").unwrap().as_str(),
        "acme.events.a.b"
    );
    assert!(!bus.source().is_empty(), "defaults to the executable name");
}
