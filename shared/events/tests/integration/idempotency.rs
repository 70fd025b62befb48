//! Idempotency stores against a real backend: the JetStream key-value
//! store on a private `nats-server`.

use std::time::{Duration, Instant};

use base64::Engine as _;
use events::backend::jetstream::{
    JetStreamConfig, JetStreamTransport, KvIdempotencyStore, StreamConfig,
};
use events::consumer::{Claim, ClaimToken, IdempotencyStore};
use events::testing::NatsServer;
use events::transport::Transport;

use crate::nats::{config, WAIT};

const BUCKET: &str = "dedup";
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

async fn transport(server: &NatsServer) -> JetStreamTransport {
    let config = JetStreamConfig::new(config(server), StreamConfig::new("EVENTS", ["idem.>"]));
    JetStreamTransport::connect(config)
        .await
        .expect("connects and provisions the stream")
}

async fn store(t: &JetStreamTransport) -> KvIdempotencyStore {
    KvIdempotencyStore::open(t, BUCKET, Duration::from_secs(60))
        .await
        .expect("opens the bucket")
        .claim_timeout(CLAIM_TIMEOUT)
}

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

/// How old the key's server timestamp is by this machine's clock.
async fn server_age(t: &JetStreamTransport, key: &str) -> Duration {
    let kv = t.context().get_key_value(BUCKET).await.unwrap();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    let entry = kv.entry(key).await.unwrap().expect("the claim is stored");
    (chrono::Utc::now() - entry.created)
        .to_std()
        .unwrap_or_default()
}

/// A claim whose server timestamp reads older than the claim timeout on the
/// contender's clock: what a contender whose clock runs ahead of the
/// server's by more than the timeout sees of a claim made a moment ago. Its
/// holder is alive and completes it; it must not be handled twice.
#[tokio::test]
async fn a_pending_claim_is_not_taken_over_on_its_server_timestamp_alone() {
    let server = NatsServer::with_jetstream();
    let t = transport(&server).await;
    let holder = store(&t).await;
    let contender = store(&t).await;
    let token = acquired(holder.claim("c/1").await.unwrap());
    tokio::time::timeout(WAIT, async {
        while server_age(&t, "c/1").await <= CLAIM_TIMEOUT + Duration::from_millis(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the claim's timestamp ages");
    assert_eq!(
        contender.claim("c/1").await.unwrap(),
        Claim::InProgress,
        "the contender has not itself watched the claim for the claim timeout"
    );
    holder.complete("c/1", token).await.unwrap();
    assert_eq!(contender.claim("c/1").await.unwrap(), Claim::Done);
    t.close().await.unwrap();
}

/// The holder crashed: the contender takes the claim over once it has seen
/// the same revision unchanged for the claim timeout by its own monotonic
/// clock, counted from its first look.
#[tokio::test]
async fn an_abandoned_claim_is_taken_over_a_claim_timeout_after_the_first_look() {
    let server = NatsServer::with_jetstream();
    let t = transport(&server).await;
    let holder = store(&t).await;
    let contender = store(&t).await;
    let abandoned = acquired(holder.claim("c/1").await.unwrap());
    let first_look = Instant::now();
    assert_eq!(contender.claim("c/1").await.unwrap(), Claim::InProgress);
    let taken = tokio::time::timeout(WAIT, async {
        loop {
            match contender.claim("c/1").await.unwrap() {
                Claim::Acquired(token) => break token,
                Claim::InProgress => tokio::time::sleep(Duration::from_millis(50)).await,
                Claim::Done => panic!("nobody completed it"),
            }
        }
    })
    .await
    .expect("the abandoned claim is taken over");
    assert!(
        first_look.elapsed() >= CLAIM_TIMEOUT,
        "taken over after {:?}",
        first_look.elapsed()
    );
    // The late holder changes nothing; a third instance sees the new claim.
    holder.complete("c/1", abandoned).await.unwrap();
    let third = store(&t).await;
    assert_eq!(third.claim("c/1").await.unwrap(), Claim::InProgress);
    contender.complete("c/1", taken).await.unwrap();
    assert_eq!(third.claim("c/1").await.unwrap(), Claim::Done);
    t.close().await.unwrap();
}
