//! Binary content mode: attributes in `ce-` headers, the payload untouched
//! in the body.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;

use super::{
    apply_extension, format_time, metadata_from_attributes, settle_tracestate, Attributes,
    RawEvent, SPEC_VERSION,
};
use crate::envelope::{EventMetadata, ExtensionValue};
use crate::error::{Error, ErrorKind, Result};
use crate::transport::{percent, Headers, Message};

pub(super) fn encode<T: Serialize>(
    metadata: &EventMetadata,
    payload: &T,
) -> Result<(Headers, Bytes)> {
    let body = serde_json::to_vec(payload).map_err(|e| {
        Error::new(
            ErrorKind::Encode,
            format!("payload of {} does not serialize", metadata.event_type()),
        )
        .with_source(e)
    })?;
    Ok((headers(metadata), Bytes::from(body)))
}

pub(super) fn encode_raw(metadata: &EventMetadata, data: Bytes) -> (Headers, Bytes) {
    (headers(metadata), data)
}

fn headers(m: &EventMetadata) -> Headers {
    let mut h = Headers::with_capacity(8 + m.extensions().len());
    // Percent-encoding leaves only U+0021..U+007E, so no value can carry a
    // line break into the NATS header block.
    let mut put = |name: &'static str, value: &str| h.push_trusted(name, percent::encode(value));
    put("ce-specversion", SPEC_VERSION);
    put("ce-id", m.id());
    put("ce-source", m.source());
    put("ce-type", &m.cloudevents_type());
    if let Some(time) = m.time() {
        put("ce-time", &format_time(time));
    }
    let optional = [
        ("ce-subject", m.subject()),
        ("ce-datacontenttype", m.data_content_type()),
        ("ce-dataschema", m.data_schema()),
        ("ce-correlationid", m.correlation_id()),
        ("ce-causationid", m.causation_id()),
        ("ce-traceparent", m.trace().map(|t| t.traceparent())),
        ("ce-tracestate", m.trace().and_then(|t| t.tracestate())),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            put(name, value);
        }
    }
    // `content-type` is read by clients that know nothing of CloudEvents, so
    // it is sent as is, not percent-encoded; a value that could not travel
    // raw is left to `ce-datacontenttype`. So is a CloudEvents media type
    // (data that is itself an event): as `content-type` it would make every
    // receiver read the message as structured mode.
    if let Some(ct) = m.data_content_type().filter(|ct| {
        ct.bytes().all(|b| (0x20..0x7f).contains(&b))
            && !super::starts_with_ignore_case(ct, "application/cloudevents")
    }) {
        h.push_trusted("content-type", ct.to_owned());
    }
    for (name, value) in m.extensions().iter() {
        let value = match value {
            ExtensionValue::String(s) => percent::encode(s),
            other => other.to_string(),
        };
        h.push_trusted(Cow::Owned(format!("ce-{name}")), value);
    }
    h
}

pub(super) fn decode(message: &Message) -> Result<RawEvent> {
    let mut attributes = Attributes::default();
    let mut extensions = Vec::new();

    for (name, value) in message.headers.iter() {
        let Some(attribute) = name
            .get(..3)
            .filter(|p| p.eq_ignore_ascii_case("ce-"))
            .map(|_| name[3..].to_ascii_lowercase())
        else {
            continue;
        };
        let value = percent::decode_attribute(name, value)?;
        let slot = match attribute.as_str() {
            "specversion" => &mut attributes.specversion,
            "id" => &mut attributes.id,
            "source" => &mut attributes.source,
            "type" => &mut attributes.ce_type,
            "time" => &mut attributes.time,
            "subject" => &mut attributes.subject,
            "datacontenttype" => &mut attributes.data_content_type,
            "dataschema" => &mut attributes.data_schema,
            "data" | "data_base64" => {
                return Err(Error::decode(format!(
                    "header {name:?} is not a valid attribute in binary mode"
                )))
            }
            _ => {
                if extensions.iter().any(|(n, _)| *n == attribute) {
                    return Err(Error::decode(format!("header {name:?} appears twice")));
                }
                extensions.push((attribute, value));
                continue;
            }
        };
        if slot.is_some() {
            return Err(Error::decode(format!("header {name:?} appears twice")));
        }
        *slot = Some(Cow::Owned(value));
    }
    if attributes.data_content_type.is_none() {
        attributes.data_content_type = message
            .headers
            .get("content-type")
            .map(|v| Cow::Owned(v.to_owned()));
    }
    let mut metadata = metadata_from_attributes(attributes)?;
    for (name, value) in extensions {
        apply_extension(&mut metadata, name, ExtensionValue::String(value))?;
    }
    settle_tracestate(&mut metadata);
    let data = (!message.payload.is_empty()).then(|| message.payload.clone());
    Ok(RawEvent { metadata, data })
}
