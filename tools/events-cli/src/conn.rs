//! The connection: settings from the environment and flags, the library's
//! transports for publishing, and read-only views of JetStream streams.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;

use events::backend::jetstream::{JetStreamConfig, JetStreamTransport};
use events::backend::nats::{NatsConfig, NatsTransport};
use events::transport::{Headers, Message, Subject, Transport};

use crate::failure::{Failure, Outcome};
use crate::subjects;
use crate::Connection;

/// How long one message of a stream scan may take to arrive before the
/// scan gives up (a scan reads what is stored, which the server sends at
/// once).
const SCAN_STALL: Duration = Duration::from_secs(10);

/// A connected client.
pub(crate) struct Conn {
    config: NatsConfig,
    core: NatsTransport,
    /// The JetStream API, if the server has JetStream on.
    js: Option<jetstream::Context>,
    /// Bound JetStream transports, by stream, for publishing.
    bound: HashMap<String, JetStreamTransport>,
}

/// A message read from a stream, without consuming it.
pub(crate) struct Stored {
    /// The stream it is in.
    pub(crate) stream: String,
    /// Its sequence there.
    pub(crate) sequence: u64,
    /// When the stream stored it.
    pub(crate) stored: Option<chrono::DateTime<chrono::Utc>>,
    /// The message in the library's form.
    pub(crate) message: Message,
}

impl Conn {
    /// Connects with the `NATS_*` variables, overridden by the flags.
    pub(crate) async fn open(flags: &Connection) -> Outcome<Conn> {
        let mut config = NatsConfig::from_env()?.connect_timeout(flags.connect_timeout);
        if let Some(servers) = &flags.server {
            config = config.servers(servers);
        }
        if config.get_servers().is_empty() {
            return Err(Failure::input("no NATS server URL given"));
        }
        if let Some(creds) = &flags.creds {
            config = config.creds_file(creds);
        }
        if let Some(ca) = &flags.ca {
            config = config.root_certificate(ca);
        }
        if config.get_name().is_none() {
            config = config.name("events-cli");
        }
        // The prefix is checked before anything is sent.
        events::wire::Codec::new(&flags.prefix)?;
        let core = NatsTransport::connect(config.clone()).await?;
        let js = core
            .client()
            .server_info()
            .jetstream
            .then(|| jetstream::new(core.client().clone()));
        Ok(Conn {
            config,
            core,
            js,
            bound: HashMap::new(),
        })
    }

    /// The core NATS transport.
    pub(crate) fn core(&self) -> &NatsTransport {
        &self.core
    }

    /// The JetStream API, or a failure saying the server has none.
    pub(crate) fn js(&self) -> Outcome<&jetstream::Context> {
        self.js.as_ref().ok_or_else(|| {
            Failure::new(format!(
                "the server {} has JetStream disabled",
                self.core.client().server_info().server_name
            ))
        })
    }

    /// Whether the server has JetStream on.
    pub(crate) fn has_jetstream(&self) -> bool {
        self.js.is_some()
    }

    /// Every stream's description.
    pub(crate) async fn streams(&self) -> Outcome<Vec<stream::Info>> {
        let Some(js) = &self.js else {
            return Ok(Vec::new());
        };
        let mut streams = js.streams();
        let mut out = Vec::new();
        while let Some(info) = streams.next().await {
            out.push(info.map_err(|e| Failure::with("listing the streams failed", &e))?);
        }
        out.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        Ok(out)
    }

    /// The stream that stores messages published on `subject`, if any.
    pub(crate) async fn stream_for(&self, subject: &Subject) -> Outcome<Option<String>> {
        Ok(self
            .streams()
            .await?
            .into_iter()
            .find(|info| {
                info.config
                    .subjects
                    .iter()
                    .any(|s| subjects::within(subject.as_str(), s))
            })
            .map(|info| info.config.name))
    }

    /// Publishes `message` as the library does: through the JetStream
    /// transport bound to the stream that captures its subject (returning
    /// once the server acknowledged it stored), else on core NATS (flushed
    /// to the server). Returns the stream's name, if one stored it.
    pub(crate) async fn publish(&mut self, mut message: Message) -> Outcome<Option<String>> {
        match self.stream_for(&message.subject).await? {
            Some(stream) => {
                let transport = self.bound(&stream).await?;
                if !transport.capabilities().publish_dedup {
                    message.dedup_id = None;
                }
                transport.publish(message).await?;
                Ok(Some(stream))
            }
            None => {
                // No stream: core NATS deduplicates nothing.
                message.dedup_id = None;
                self.core.publish(message).await?;
                self.core.flush().await?;
                Ok(None)
            }
        }
    }

    /// Whether the stream that stores `subject` (if any) is partitioned
    /// by key.
    pub(crate) async fn partitioned(&mut self, subject: &Subject) -> Outcome<bool> {
        match self.stream_for(subject).await? {
            Some(stream) => Ok(self.bound(&stream).await?.capabilities().key_partitions > 0),
            None => Ok(false),
        }
    }

    /// Whether a stream that stores subjects `pattern` matches is
    /// partitioned by key: its events' subjects then carry the key after
    /// the prefix (`<prefix>.<key>.<type>`).
    pub(crate) async fn keyed(&mut self, pattern: &str) -> Outcome<bool> {
        let names: Vec<String> = self
            .streams()
            .await?
            .into_iter()
            .filter(|info| {
                info.config
                    .subjects
                    .iter()
                    .any(|s| subjects::overlap(pattern, s))
            })
            .map(|info| info.config.name)
            .collect();
        for name in names {
            if self.bound(&name).await?.capabilities().key_partitions > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The library's JetStream transport bound to `stream`.
    pub(crate) async fn bound(&mut self, stream: &str) -> Outcome<&JetStreamTransport> {
        if !self.bound.contains_key(stream) {
            let transport =
                JetStreamTransport::connect(JetStreamConfig::bind(self.config.clone(), stream))
                    .await?;
            self.bound.insert(stream.to_owned(), transport);
        }
        Ok(&self.bound[stream])
    }

    /// The stream `name`.
    pub(crate) async fn stream(&self, name: &str) -> Outcome<stream::Stream> {
        self.js()?
            .get_stream(name)
            .await
            .map_err(|e| Failure::with(format!("the stream {name} is not available"), &e))
    }

    /// An ephemeral ordered consumer of `stream` reading `filter` from
    /// `deliver`: no acks, nothing another consumer sees changes, and the
    /// server removes it once the client is gone.
    pub(crate) async fn ordered(
        &self,
        stream: &stream::Stream,
        filter: &str,
        deliver: consumer::DeliverPolicy,
    ) -> Outcome<consumer::Consumer<consumer::pull::OrderedConfig>> {
        let name = &stream.cached_info().config.name;
        stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::with(format!("reading stream {name} ({filter}) failed"), &e))
    }

    /// Every message of every stream that `pattern` matches, in stream
    /// order per stream, read by ephemeral ordered consumers (nothing is
    /// acknowledged or removed).
    pub(crate) async fn scan(&self, pattern: &str) -> Outcome<Vec<Stored>> {
        let matcher = events::transport::SubjectPattern::parse(pattern)?;
        let mut out = Vec::new();
        for info in self.streams().await? {
            for filter in subjects::filters(pattern, &info.config.subjects) {
                let stream = self.stream(&info.config.name).await?;
                let reader = self
                    .ordered(&stream, &filter, consumer::DeliverPolicy::All)
                    .await?;
                let reader_name = reader.cached_info().name.clone();
                let read = if reader.cached_info().num_pending == 0 {
                    Ok(())
                } else {
                    read_through(reader, &info.config.name, &matcher, &mut out).await
                };
                forget(&stream, &reader_name).await;
                read?;
            }
        }
        Ok(out)
    }

    /// Closes every connection, flushing what was published.
    pub(crate) async fn close(self) -> Outcome<()> {
        for (_, transport) in self.bound {
            transport.close().await?;
        }
        self.core.close().await?;
        Ok(())
    }
}

/// Reads `reader` until it has delivered what was stored when it was
/// made, keeping the messages `matcher` matches.
async fn read_through(
    reader: consumer::Consumer<consumer::pull::OrderedConfig>,
    stream: &str,
    matcher: &events::transport::SubjectPattern,
    out: &mut Vec<Stored>,
) -> Outcome<()> {
    let mut messages = reader
        .messages()
        .await
        .map_err(|e| Failure::with(format!("reading stream {stream} failed"), &e))?;
    loop {
        let next = tokio::time::timeout(SCAN_STALL, messages.next())
            .await
            .map_err(|_| {
                Failure::new(format!(
                    "reading stream {stream} stalled for {}s",
                    SCAN_STALL.as_secs()
                ))
            })?;
        let Some(next) = next else {
            return Ok(());
        };
        let message =
            next.map_err(|e| Failure::with(format!("reading stream {stream} failed"), &e))?;
        let stored = stored(&message, stream)?;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if matcher.matches(&stored.message.subject) {
            out.push(stored);
        }
        if pending == 0 {
            return Ok(());
        }
    }
}

/// Deletes a reader's ephemeral consumer at once (the server would keep it
/// for its inactivity threshold, and `status` would list it meanwhile).
/// Best effort: one left behind expires by itself.
pub(crate) async fn forget(stream: &stream::Stream, name: &str) {
    let _ = stream.delete_consumer(name).await;
}

/// A message a JetStream consumer delivered, in the library's form.
pub(crate) fn stored(message: &jetstream::Message, stream: &str) -> Outcome<Stored> {
    let info = message
        .info()
        .map_err(|e| Failure::new(format!("a message of stream {stream} has no metadata: {e}")))?;
    Ok(Stored {
        stream: stream.to_owned(),
        sequence: info.stream_sequence,
        stored: Some(info.published),
        message: to_message(
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
        ),
    })
}

/// A message read with a direct or API get, in the library's form.
pub(crate) fn from_stream_message(
    message: &jetstream::message::StreamMessage,
    stream: &str,
) -> Stored {
    Stored {
        stream: stream.to_owned(),
        sequence: message.sequence,
        stored: Some(message.time),
        message: to_message(
            message.subject.as_str(),
            Some(&message.headers),
            &message.payload,
        ),
    }
}

/// Subject, headers and body as the library's [`Message`]. Headers the
/// library's type refuses (an empty name, a NUL in a value) are left out,
/// as the library's own transports leave them out.
pub(crate) fn to_message(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &bytes::Bytes,
) -> Message {
    let mut message = Message::new(Subject::received(subject.to_owned()), payload.clone());
    let mut ours = Headers::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        for value in values {
            let _ = ours.append(name.to_owned(), value.as_str().to_owned());
        }
    }
    message.headers = ours;
    message
}
