//! What each nats-server version offers, used where it is offered and
//! refused at connect where it is not: every test reads the version from
//! the transport and checks the feature on newer servers and the refusal
//! on older ones, so it means something on every version of the matrix.

use std::time::Duration;

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport, StreamConfig};
use events::testing::NatsServer;
use events::transport::{Message, Subject, Transport};
use events::ErrorKind;

use crate::nats::{config, WAIT};

/// The server's version, read through a transport without any option that
/// needs a particular one.
async fn version_of(server: &NatsServer) -> (u64, u64, u64) {
    let probe = JetStreamTransport::connect(JetStreamConfig::new(
        config(server),
        StreamConfig::new("PROBE", ["probe.>"]),
    ))
    .await
    .expect("connects without version-dependent options");
    let version = probe.server_version();
    probe.close().await.unwrap();
    version
}

async fn stored(t: &JetStreamTransport) -> u64 {
    let mut stream = t.context().get_stream(t.stream_name()).await.unwrap();
    stream.info().await.unwrap().state.messages
}

fn message(subject: &str, id: &str) -> Message {
    let mut message = Message::new(Subject::parse(subject).unwrap(), b"x".to_vec());
    message.dedup_id = Some(id.to_owned());
    message
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let polled = tokio::time::timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{what} within {limit:?}");
}

#[tokio::test]
async fn a_message_ttl_expires_messages_on_2_11_and_is_refused_at_connect_before() {
    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let connected = JetStreamTransport::connect(
        JetStreamConfig::new(config(&server), StreamConfig::new("TTL", ["ttl.>"]))
            .message_ttl(Duration::from_secs(1)),
    )
    .await;
    if version < (2, 11, 0) {
        let err = connected.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        return;
    }
    let t = connected.unwrap_or_else(|e| panic!("TTL is offered by {version:?}: {e}"));
    t.publish(message("ttl.a", "ttl-1"))
        .await
        .unwrap_or_else(|e| panic!("a publish with a TTL is stored on {version:?}: {e:?}"));
    assert_eq!(stored(&t).await, 1);
    eventually("the message expires", WAIT, || async {
        stored(&t).await == 0
    })
    .await;
    t.close().await.unwrap();
}

/// The stream as the server has it now.
async fn stream_config(
    t: &JetStreamTransport,
    name: &str,
) -> async_nats::jetstream::stream::Config {
    let mut stream = t.context().get_stream(name).await.unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn provisioning_updates_only_managed_fields_and_never_turns_a_flag_off() {
    use async_nats::jetstream::stream::{Compression, Config};

    let server = NatsServer::with_jetstream();
    let version = version_of(&server).await;
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    // What an operator set, each on the servers that have it.
    let mut operator = Config {
        name: "OPS".into(),
        subjects: vec!["ops.>".into()],
        description: Some("owned by the platform team".into()),
        max_messages_per_subject: 5,
        deny_delete: true,
        ..Default::default()
    };
    if version >= (2, 10, 0) {
        operator.compression = Some(Compression::S2);
        operator.metadata = [("owner".to_owned(), "platform".to_owned())].into();
    }
    if version >= (2, 11, 0) {
        operator.allow_message_ttl = true;
        operator.subject_delete_marker_ttl = Some(Duration::from_secs(60));
        operator.allow_rollup = true;
    }
    if version >= (2, 12, 0) {
        operator.allow_atomic_publish = true;
        operator.allow_message_schedules = true;
    }
    if version >= (2, 14, 0) {
        operator.allow_batch_publish = true;
    }
    js.create_stream(operator).await.unwrap();

    let mut ours = StreamConfig::new("OPS", ["ops.>"]).max_age(Duration::from_secs(3600));
    if version >= (2, 10, 0) {
        ours = ours.metadata("service", "orders");
    }
    let t = JetStreamTransport::connect(JetStreamConfig::new(config(&server), ours))
        .await
        .unwrap_or_else(|e| {
            panic!("connects to a stream an operator changed on {version:?}: {e:?}")
        });
    let after = stream_config(&t, "OPS").await;
    assert_eq!(
        after.max_age,
        Duration::from_secs(3600),
        "a managed field is updated"
    );
    assert_eq!(
        after.description.as_deref(),
        Some("owned by the platform team")
    );
    assert_eq!(after.max_messages_per_subject, 5);
    assert!(after.deny_delete);
    if version >= (2, 10, 0) {
        assert_eq!(after.compression, Some(Compression::S2));
        assert_eq!(
            after.metadata.get("owner").map(String::as_str),
            Some("platform")
        );
        assert_eq!(
            after.metadata.get("service").map(String::as_str),
            Some("orders")
        );
    }
    if version >= (2, 11, 0) {
        assert!(after.allow_message_ttl);
        assert_eq!(
            after.subject_delete_marker_ttl,
            Some(Duration::from_secs(60))
        );
    }
    if version >= (2, 12, 0) {
        assert!(after.allow_atomic_publish && after.allow_message_schedules);
    }
    if version >= (2, 14, 0) {
        assert!(after.allow_batch_publish);
    }
    t.close().await.unwrap();

    // Counters exclude TTLs and schedules, so on a stream of their own; the
    // server refuses any change of the setting.
    if version >= (2, 12, 0) {
        js.create_stream(Config {
            name: "COUNTERS".into(),
            subjects: vec!["counters.>".into()],
            allow_message_counter: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let t = JetStreamTransport::connect(JetStreamConfig::new(
            config(&server),
            StreamConfig::new("COUNTERS", ["counters.>"]).max_age(Duration::from_secs(3600)),
        ))
        .await
        .unwrap_or_else(|e| panic!("connects to a counter stream on {version:?}: {e:?}"));
        assert!(stream_config(&t, "COUNTERS").await.allow_message_counter);
        t.close().await.unwrap();
    }
}
