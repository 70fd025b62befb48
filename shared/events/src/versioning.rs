//! Schema versions: upcasters that bring old payloads up to date, and the
//! policy for payloads newer than the consumer knows.
//!
//! Every payload type declares its major version
//! ([`EventPayload::VERSION`](crate::EventPayload::VERSION)); the version
//! travels as a suffix of the CloudEvents `type` (`orders.order_placed.v2`).
//! A consumer of v3 that receives v1 runs the upcasters v1 -> v2 -> v3 on the
//! JSON value, then decodes the result into its Rust type.
//!
//! ```
//! use events::versioning::Upcasters;
//! use serde_json::json;
//!
//! // v1 had `amount` in euros; v2 has `total_cents`.
//! let upcasters = Upcasters::new().register("orders.order_placed", 1, |mut v| {
//!     let euros = v["amount"].as_f64().ok_or("amount missing")?;
//!     v["total_cents"] = json!((euros * 100.0).round() as u64);
//!     Ok(v)
//! });
//! let v2 = upcasters.upcast("orders.order_placed", 1, 2, json!({"amount": 12.5}))?;
//! assert_eq!(v2["total_cents"], 1250);
//! # Ok::<(), events::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{BoxError, Error, ErrorKind, Result};

/// What to do with an event whose major version is newer than the
/// consumer's type. New policies may be added, so matches need a wildcard
/// arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VersionPolicy {
    /// Refuse it with [`ErrorKind::UnsupportedVersion`]: the consumer decides
    /// (wait for a redeploy by nacking with a delay, or dead-letter).
    #[default]
    Reject,
    /// Try to read it as the known version anyway. Works when the newer
    /// version only added fields; still fails with a decode error when the
    /// shape really changed.
    Tolerant,
}

type UpcastFn = dyn Fn(Value) -> std::result::Result<Value, BoxError> + Send + Sync;

/// A registry of upcasters, keyed by type name and the version they read.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Arc<UpcastFn>>,
}

impl Upcasters {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that turns a `from_version` payload of
    /// `event_type` into a `from_version + 1` payload. Replaces an earlier
    /// registration of the same step.
    ///
    /// The step returns a [`BoxError`], so `?` works on any error type and
    /// on `Option::ok_or("message")`.
    pub fn register<F>(mut self, event_type: &str, from_version: u32, step: F) -> Self
    where
        F: Fn(Value) -> std::result::Result<Value, BoxError> + Send + Sync + 'static,
    {
        self.steps
            .insert((event_type.to_owned(), from_version), Arc::new(step));
        self
    }

    /// Whether a step from `from_version` is registered for `event_type`.
    pub fn has_step(&self, event_type: &str, from_version: u32) -> bool {
        self.steps
            .contains_key(&(event_type.to_owned(), from_version))
    }

    /// Runs the chain `from` -> `from + 1` -> ... -> `to`.
    ///
    /// Fails with [`ErrorKind::MissingUpcaster`] if a step is missing or
    /// returns an error.
    pub fn upcast(&self, event_type: &str, from: u32, to: u32, mut value: Value) -> Result<Value> {
        let mut key = (event_type.to_owned(), from);
        while key.1 < to {
            let version = key.1;
            let step = self.steps.get(&key).ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingUpcaster,
                    format!(
                        "no upcaster for {event_type} from v{version} to v{}",
                        version + 1
                    ),
                )
            })?;
            value = step(value).map_err(|e| {
                Error::new(
                    ErrorKind::MissingUpcaster,
                    format!(
                        "upcaster for {event_type} from v{version} to v{} failed",
                        version + 1
                    ),
                )
                .with_source(e)
            })?;
            key.1 += 1;
        }
        Ok(value)
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self
            .steps
            .keys()
            // u64: a step registered from u32::MAX is shown, not an overflow.
            .map(|(t, v)| format!("{t} v{v}->v{}", u64::from(*v) + 1))
            .collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

/// Outside the crate, a match on a version policy needs a wildcard arm
/// (more policies may come); one without must not compile:
///
/// ```compile_fail,E0004
/// use events::versioning::VersionPolicy;
/// fn strict(policy: VersionPolicy) -> bool {
///     match policy {
///         VersionPolicy::Reject => true,
///         VersionPolicy::Tolerant => false,
///     }
/// }
/// ```
#[allow(dead_code)]
const NON_EXHAUSTIVE: () = ();

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain() -> Upcasters {
        Upcasters::new()
            .register("a.b", 1, |mut v: Value| {
                v["v2"] = json!(true);
                Ok(v)
            })
            .register("a.b", 2, |mut v: Value| {
                v["v3"] = json!(true);
                Ok(v)
            })
    }

    #[test]
    fn steps_run_in_order_up_to_the_target() {
        let out = chain().upcast("a.b", 1, 3, json!({})).unwrap();
        assert_eq!(out, json!({"v2": true, "v3": true}));
        let out = chain().upcast("a.b", 2, 3, json!({})).unwrap();
        assert_eq!(out, json!({"v3": true}));
        let out = chain().upcast("a.b", 3, 3, json!({"x": 1})).unwrap();
        assert_eq!(out, json!({"x": 1}));
    }

    #[test]
    fn a_gap_in_the_chain_is_a_missing_upcaster_error() {
        let err = chain().upcast("a.b", 1, 4, json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
        assert_eq!(err.detail(), "no upcaster for a.b from v3 to v4");
        let err = chain().upcast("other.type", 1, 2, json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
    }

    #[test]
    fn a_failing_step_reports_which_step_and_why() {
        let u = Upcasters::new().register("a.b", 1, |_v: Value| Err("field gone".into()));
        let err = u.upcast("a.b", 1, 2, json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingUpcaster);
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "field gone"
        );
    }

    #[test]
    fn debug_lists_the_steps() {
        assert_eq!(
            format!("{:?}", chain()),
            r#"Upcasters { steps: ["a.b v1->v2", "a.b v2->v3"] }"#
        );
    }
}
