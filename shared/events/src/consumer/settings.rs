//! Consumer settings read from the environment, the counterpart of
//! [`NatsConfig::from_env`](crate::backend::nats::NatsConfig) for the
//! consumer runtime: operators tune concurrency, prefetch, ack wait, retries
//! and timeouts per deployment without a rebuild.

use std::time::Duration;

use crate::consumer::RetryPolicy;
use crate::error::{Error, Result};

/// The prefix [`ConsumerSettings::from_env`] reads its variables under.
pub const DEFAULT_ENV_PREFIX: &str = "EVENTS_CONSUMER_";

/// The variable names after the prefix, in the order they are documented.
const CONCURRENCY: &str = "CONCURRENCY";
const PREFETCH: &str = "PREFETCH";
const ACK_WAIT: &str = "ACK_WAIT";
const MAX_ATTEMPTS: &str = "MAX_ATTEMPTS";
const RETRY_INITIAL_DELAY: &str = "RETRY_INITIAL_DELAY";
const RETRY_MAX_DELAY: &str = "RETRY_MAX_DELAY";
const RETRY_MULTIPLIER: &str = "RETRY_MULTIPLIER";
const RETRY_JITTER: &str = "RETRY_JITTER";
const SHUTDOWN_TIMEOUT: &str = "SHUTDOWN_TIMEOUT";
const HANDLER_TIMEOUT: &str = "HANDLER_TIMEOUT";

/// The longest value quoted back in an error: the rest of a pasted blob
/// would only bury the variable's name.
const MAX_QUOTED: usize = 64;

/// Settings of a [`Consumer`](crate::consumer::Consumer), each one optional:
/// what is set replaces the consumer's value when applied with
/// [`Consumer::settings`](crate::consumer::Consumer::settings), what is
/// unset leaves the consumer's value (its default, or what the code set)
/// alone.
///
/// Built in code with owned-`self` setters, or from the environment with
/// [`from_env`](Self::from_env):
///
/// ```
/// use std::time::Duration;
/// use events::consumer::{Consumer, ConsumerSettings, RetryPolicy};
///
/// let settings = ConsumerSettings::new()
///     .concurrency(4)
///     .retry(RetryPolicy::exponential().max_attempts(3))
///     .shutdown_timeout(Duration::from_secs(10));
/// assert_eq!(settings.get_concurrency(), Some(4));
/// assert_eq!(settings.get_ack_wait(), None);
///
/// let bus = events::Bus::memory("billing");
/// let consumer = Consumer::new(&bus, "billing")?.settings(&settings);
/// # let _ = consumer;
/// # Ok::<(), events::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ConsumerSettings {
    concurrency: Option<usize>,
    prefetch: Option<usize>,
    ack_wait: Option<Duration>,
    retry: Option<RetryPolicy>,
    shutdown_timeout: Option<Duration>,
    handler_timeout: Option<Duration>,
}

impl ConsumerSettings {
    /// Nothing set: applying it changes nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from environment variables named
    /// [`EVENTS_CONSUMER_`](DEFAULT_ENV_PREFIX)`<NAME>`; unset (or empty)
    /// ones stay unset.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `EVENTS_CONSUMER_CONCURRENCY` | events handled at once (a whole number, at least 1) |
    /// | `EVENTS_CONSUMER_PREFETCH` | events fetched ahead of the handlers (at least 1) |
    /// | `EVENTS_CONSUMER_ACK_WAIT` | how long a delivery may stay unsettled before it is redelivered (a duration) |
    /// | `EVENTS_CONSUMER_MAX_ATTEMPTS` | attempts per event, the first included (at least 1) |
    /// | `EVENTS_CONSUMER_RETRY_INITIAL_DELAY` | the wait before the second attempt (a duration) |
    /// | `EVENTS_CONSUMER_RETRY_MAX_DELAY` | the longest wait between attempts (a duration) |
    /// | `EVENTS_CONSUMER_RETRY_MULTIPLIER` | the factor the wait grows by per attempt (a number, at least 1) |
    /// | `EVENTS_CONSUMER_RETRY_JITTER` | randomize the waits (`true` or `false`) |
    /// | `EVENTS_CONSUMER_SHUTDOWN_TIMEOUT` | how long shutdown waits for in-flight handlers (a duration) |
    /// | `EVENTS_CONSUMER_HANDLER_TIMEOUT` | a deadline per attempt (a duration) |
    ///
    /// A duration is a number with a unit, `ms`, `s`, `m` or `h` (`250ms`,
    /// `1.5s`, `2m`); a bare number is seconds. Values too large for their
    /// type are saturated (a duration to `Duration::MAX`, which the
    /// consumer reads as "no bound" where it has a meaning, and caps where
    /// the timer or the broker needs it). Any retry variable set makes the
    /// retry policy [`RetryPolicy::exponential`] with those values in
    /// place, replacing the consumer's policy.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput), naming
    /// the variable, for a value that is not of its form (not a number, a
    /// negative number, an unknown unit, zero where at least 1 is needed).
    pub fn from_env() -> Result<Self> {
        Self::from_env_prefixed(DEFAULT_ENV_PREFIX)
    }

    /// [`from_env`](Self::from_env) with another prefix, for several
    /// consumers in one process: `from_env_prefixed("BILLING_")` reads
    /// `BILLING_CONCURRENCY`, `BILLING_MAX_ATTEMPTS` and so on.
    pub fn from_env_prefixed(prefix: &str) -> Result<Self> {
        Self::from_lookup(prefix, |name| std::env::var(name).ok())
    }

    /// [`from_env_prefixed`](Self::from_env_prefixed) reading from `lookup`
    /// instead of the process environment (for tests and other
    /// configuration sources).
    ///
    /// ```
    /// use std::time::Duration;
    /// use events::consumer::ConsumerSettings;
    ///
    /// let settings = ConsumerSettings::from_lookup("APP_", |name| match name {
    ///     "APP_ACK_WAIT" => Some("90s".to_owned()),
    ///     "APP_MAX_ATTEMPTS" => Some("3".to_owned()),
    ///     _ => None,
    /// })?;
    /// assert_eq!(settings.get_ack_wait(), Some(Duration::from_secs(90)));
    /// assert_eq!(settings.get_retry().map(|r| r.get_max_attempts()), Some(3));
    ///
    /// let err = ConsumerSettings::from_lookup("APP_", |name| {
    ///     (name == "APP_CONCURRENCY").then(|| "lots".to_owned())
    /// })
    /// .unwrap_err();
    /// assert!(err.to_string().contains("APP_CONCURRENCY"));
    /// # Ok::<(), events::Error>(())
    /// ```
    pub fn from_lookup(prefix: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| {
            let full = format!("{prefix}{name}");
            let value = lookup(&full).filter(|v| !v.trim().is_empty());
            value.map(|v| (full, v))
        };
        let mut settings = ConsumerSettings::new();
        if let Some((name, value)) = var(CONCURRENCY) {
            settings = settings.concurrency(parse_count(&name, &value)?);
        }
        if let Some((name, value)) = var(PREFETCH) {
            settings = settings.prefetch(parse_count(&name, &value)?);
        }
        if let Some((name, value)) = var(ACK_WAIT) {
            settings = settings.ack_wait(parse_duration(&name, &value)?);
        }
        if let Some((name, value)) = var(SHUTDOWN_TIMEOUT) {
            settings = settings.shutdown_timeout(parse_duration(&name, &value)?);
        }
        if let Some((name, value)) = var(HANDLER_TIMEOUT) {
            settings = settings.handler_timeout(parse_duration(&name, &value)?);
        }

        // Any retry variable set starts from the default policy; the rest
        // of it stays at the defaults.
        let mut retry = None::<RetryPolicy>;
        fn base(retry: &mut Option<RetryPolicy>) -> RetryPolicy {
            retry.take().unwrap_or_else(RetryPolicy::exponential)
        }
        if let Some((name, value)) = var(MAX_ATTEMPTS) {
            let attempts = u32::try_from(parse_count(&name, &value)?).unwrap_or(u32::MAX);
            retry = Some(base(&mut retry).max_attempts(attempts));
        }
        if let Some((name, value)) = var(RETRY_INITIAL_DELAY) {
            retry = Some(base(&mut retry).initial_delay(parse_duration(&name, &value)?));
        }
        if let Some((name, value)) = var(RETRY_MAX_DELAY) {
            retry = Some(base(&mut retry).max_delay(parse_duration(&name, &value)?));
        }
        if let Some((name, value)) = var(RETRY_MULTIPLIER) {
            retry = Some(base(&mut retry).multiplier(parse_multiplier(&name, &value)?));
        }
        if let Some((name, value)) = var(RETRY_JITTER) {
            retry = Some(base(&mut retry).jitter(parse_bool(&name, &value)?));
        }
        if let Some(policy) = retry {
            settings = settings.retry(policy);
        }
        Ok(settings)
    }

    /// Events handled at once (see
    /// [`Consumer::concurrency`](crate::consumer::Consumer::concurrency)).
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// Events fetched ahead of the handlers (see
    /// [`Consumer::prefetch`](crate::consumer::Consumer::prefetch)).
    pub fn prefetch(mut self, events: usize) -> Self {
        self.prefetch = Some(events);
        self
    }

    /// How long a delivery may stay unsettled (see
    /// [`Consumer::ack_wait`](crate::consumer::Consumer::ack_wait)).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// The retry policy (see
    /// [`Consumer::retry`](crate::consumer::Consumer::retry)).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long shutdown waits for in-flight handlers (see
    /// [`Consumer::shutdown_timeout`](crate::consumer::Consumer::shutdown_timeout)).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// A deadline per attempt (see
    /// [`Consumer::handler_timeout`](crate::consumer::Consumer::handler_timeout)).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// The concurrency, if set.
    pub fn get_concurrency(&self) -> Option<usize> {
        self.concurrency
    }
    /// The prefetch, if set.
    pub fn get_prefetch(&self) -> Option<usize> {
        self.prefetch
    }
    /// The ack wait, if set.
    pub fn get_ack_wait(&self) -> Option<Duration> {
        self.ack_wait
    }
    /// The retry policy, if set.
    pub fn get_retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }
    /// The shutdown timeout, if set.
    pub fn get_shutdown_timeout(&self) -> Option<Duration> {
        self.shutdown_timeout
    }
    /// The handler timeout, if set.
    pub fn get_handler_timeout(&self) -> Option<Duration> {
        self.handler_timeout
    }
}

/// `value` as quoted in an error: cut, so a pasted blob stays one line.
fn quoted(value: &str) -> String {
    let mut end = value.len().min(MAX_QUOTED);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    if end < value.len() {
        format!("{:?}...", &value[..end])
    } else {
        format!("{value:?}")
    }
}

fn invalid(name: &str, value: &str, expected: &str) -> Error {
    Error::invalid(format!("{name}={}: expected {expected}", quoted(value)))
}

/// A whole number of at least 1; one too large for `usize` saturates.
fn parse_count(name: &str, value: &str) -> Result<usize> {
    let digits = value.trim();
    let expected = "a whole number of at least 1";
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(name, value, expected));
    }
    let n = digits.parse::<usize>().unwrap_or(usize::MAX);
    if n == 0 {
        return Err(invalid(name, value, expected));
    }
    Ok(n)
}

/// A finite number of at least 1.
fn parse_multiplier(name: &str, value: &str) -> Result<f64> {
    match value.trim().parse::<f64>() {
        Ok(factor) if factor.is_finite() && factor >= 1.0 => Ok(factor),
        _ => Err(invalid(name, value, "a number of at least 1")),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(name, value, "true or false")),
    }
}

/// `250ms`, `1.5s`, `2m`, `1h`, or a bare number of seconds. Computed in
/// whole nanoseconds (no float rounding: `0.3s` is exactly 300 ms); a value
/// beyond `Duration::MAX` saturates to it.
pub(crate) fn parse_duration(name: &str, value: &str) -> Result<Duration> {
    let expected = "a duration such as 250ms, 1.5s, 2m or 1h (a bare number is seconds)";
    let text = value.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_nanos: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        _ => return Err(invalid(name, value, expected)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_only(whole) || !digits_only(fraction) {
        return Err(invalid(name, value, expected));
    }
    let max = Duration::MAX.as_nanos();
    // Leading zeros are dropped so their count cannot overflow the parse;
    // a whole part of 39 digits or more is past any u128 and saturates.
    let whole = whole.trim_start_matches('0');
    let whole_nanos = match whole.parse::<u128>() {
        Ok(n) => n.checked_mul(unit_nanos),
        Err(_) if whole.is_empty() => Some(0),
        Err(_) => None,
    };
    // Digits past the 18th are below a nanosecond even in hours.
    let fraction = &fraction[..fraction.len().min(18)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let scale = 10u128.pow(fraction.len() as u32);
        fraction.parse::<u128>().unwrap_or(0) * unit_nanos / scale
    };
    let nanos = whole_nanos
        .and_then(|n| n.checked_add(fraction_nanos))
        .unwrap_or(u128::MAX);
    if nanos >= max {
        return Ok(Duration::MAX);
    }
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use futures_util::future::BoxFuture;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::backend::memory::MemoryTransport;
    use crate::consumer::{Consumer, Context, DeadLetter, HandlerError};
    use crate::transport::{
        Capabilities, Message, SubjectPattern, SubscribeOptions, Subscription, Transport,
    };
    use crate::{Bus, ErrorKind, Event, EventPayload};

    /// The value of `name` among `vars`, as an environment would give it.
    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn from(vars: &[(&str, &str)]) -> Result<ConsumerSettings> {
        ConsumerSettings::from_lookup(DEFAULT_ENV_PREFIX, lookup(vars))
    }

    #[test]
    fn every_documented_variable_is_read() {
        let settings = from(&[
            ("EVENTS_CONSUMER_CONCURRENCY", "8"),
            ("EVENTS_CONSUMER_PREFETCH", " 512 "),
            ("EVENTS_CONSUMER_ACK_WAIT", "90s"),
            ("EVENTS_CONSUMER_MAX_ATTEMPTS", "3"),
            ("EVENTS_CONSUMER_RETRY_INITIAL_DELAY", "250ms"),
            ("EVENTS_CONSUMER_RETRY_MAX_DELAY", "2m"),
            ("EVENTS_CONSUMER_RETRY_MULTIPLIER", "3"),
            ("EVENTS_CONSUMER_RETRY_JITTER", "false"),
            ("EVENTS_CONSUMER_SHUTDOWN_TIMEOUT", "1h"),
            ("EVENTS_CONSUMER_HANDLER_TIMEOUT", "1.5"),
        ])
        .unwrap();
        let retry = RetryPolicy::exponential()
            .max_attempts(3)
            .initial_delay(Duration::from_millis(250))
            .max_delay(Duration::from_secs(120))
            .multiplier(3.0)
            .jitter(false);
        let expected = ConsumerSettings::new()
            .concurrency(8)
            .prefetch(512)
            .ack_wait(Duration::from_secs(90))
            .retry(retry)
            .shutdown_timeout(Duration::from_secs(3600))
            .handler_timeout(Duration::from_millis(1500));
        assert_eq!(settings, expected);
        assert_eq!(from(&[]).unwrap(), ConsumerSettings::new());
        assert_eq!(
            from(&[("EVENTS_CONSUMER_ACK_WAIT", "  ")]).unwrap(),
            ConsumerSettings::new(),
            "empty counts as unset"
        );
    }

    #[test]
    fn a_prefix_reads_other_names() {
        let settings = ConsumerSettings::from_lookup(
            "BILLING_",
            lookup(&[
                ("BILLING_CONCURRENCY", "2"),
                ("EVENTS_CONSUMER_CONCURRENCY", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.get_concurrency(), Some(2));
    }

    #[test]
    fn a_bad_value_is_invalid_input_naming_the_variable() {
        let cases = [
            ("EVENTS_CONSUMER_CONCURRENCY", "0"),
            ("EVENTS_CONSUMER_CONCURRENCY", "-1"),
            ("EVENTS_CONSUMER_CONCURRENCY", "many"),
            ("EVENTS_CONSUMER_PREFETCH", "1.5"),
            ("EVENTS_CONSUMER_MAX_ATTEMPTS", "0"),
            ("EVENTS_CONSUMER_ACK_WAIT", "-5s"),
            ("EVENTS_CONSUMER_ACK_WAIT", "5 fortnights"),
            ("EVENTS_CONSUMER_ACK_WAIT", "."),
            ("EVENTS_CONSUMER_ACK_WAIT", "ms"),
            ("EVENTS_CONSUMER_SHUTDOWN_TIMEOUT", "1.2.3s"),
            ("EVENTS_CONSUMER_HANDLER_TIMEOUT", "NaN"),
            ("EVENTS_CONSUMER_RETRY_MULTIPLIER", "0.5"),
            ("EVENTS_CONSUMER_RETRY_MULTIPLIER", "inf"),
            ("EVENTS_CONSUMER_RETRY_JITTER", "maybe"),
        ];
        for (name, value) in cases {
            let err = from(&[(name, value)]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name}={value}");
            let text = err.to_string();
            assert!(text.contains(name), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        let long = "x".repeat(10_000);
        let text = from(&[("EVENTS_CONSUMER_ACK_WAIT", &long)])
            .unwrap_err()
            .to_string();
        assert!(text.len() < 300, "the value is cut: {} bytes", text.len());
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let huge = "9".repeat(400);
        let settings = from(&[
            ("EVENTS_CONSUMER_CONCURRENCY", &huge),
            ("EVENTS_CONSUMER_PREFETCH", "18446744073709551616"),
            ("EVENTS_CONSUMER_MAX_ATTEMPTS", "4294967296"),
            ("EVENTS_CONSUMER_ACK_WAIT", &format!("{huge}h")),
            (
                "EVENTS_CONSUMER_SHUTDOWN_TIMEOUT",
                "18446744073709551615.999999999999",
            ),
            ("EVENTS_CONSUMER_HANDLER_TIMEOUT", &format!("0.{huge}ms")),
            (
                "EVENTS_CONSUMER_RETRY_MAX_DELAY",
                &format!("{}1h", "0".repeat(500)),
            ),
        ])
        .unwrap();
        assert_eq!(settings.get_concurrency(), Some(usize::MAX));
        assert_eq!(settings.get_prefetch(), Some(usize::MAX));
        assert_eq!(
            settings.get_retry().map(RetryPolicy::get_max_attempts),
            Some(u32::MAX)
        );
        assert_eq!(settings.get_ack_wait(), Some(Duration::MAX));
        assert_eq!(settings.get_shutdown_timeout(), Some(Duration::MAX));
        assert!(settings.get_handler_timeout() < Some(Duration::from_millis(1)));
        // Applied to a consumer, nothing panics either.
        let bus = Bus::memory("settings");
        let consumer = Consumer::new(&bus, "c").unwrap().settings(&settings);
        assert!(format!("{consumer:?}").contains(&format!("{}", usize::MAX)));
    }

    #[test]
    fn durations_are_exact() {
        let d = |v: &str| parse_duration("X", v).unwrap();
        assert_eq!(d("0.3s"), Duration::from_millis(300));
        assert_eq!(d("1.5ms"), Duration::from_micros(1500));
        assert_eq!(d(".5m"), Duration::from_secs(30));
        assert_eq!(d("7."), Duration::from_secs(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("2h"), Duration::from_secs(7200));
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Job {
        n: u32,
    }
    impl EventPayload for Job {
        const TYPE: &'static str = "settings.job";
    }

    /// A memory transport that records the options of every subscription.
    #[derive(Debug, Default)]
    struct Recording {
        inner: MemoryTransport,
        options: Mutex<Vec<SubscribeOptions>>,
    }

    impl Transport for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn capabilities(&self) -> &Capabilities {
            self.inner.capabilities()
        }
        fn publish(&self, message: Message) -> BoxFuture<'_, Result<()>> {
            self.inner.publish(message)
        }
        fn subscribe(&self, options: SubscribeOptions) -> BoxFuture<'_, Result<Subscription>> {
            self.options.lock().unwrap().push(options.clone());
            self.inner.subscribe(options)
        }
        fn flush(&self) -> BoxFuture<'_, Result<()>> {
            self.inner.flush()
        }
        fn close(&self) -> BoxFuture<'_, Result<()>> {
            self.inner.close()
        }
    }

    async fn ok(_: Event<Job>, _: Context<()>) -> Result<(), HandlerError> {
        Ok(())
    }

    #[tokio::test]
    async fn prefetch_and_ack_wait_reach_the_subscription() {
        let transport = Arc::new(Recording::default());
        let bus = Bus::builder_shared(transport.clone())
            .source("t")
            .build()
            .unwrap();
        let settings = from(&[
            ("EVENTS_CONSUMER_PREFETCH", "7"),
            ("EVENTS_CONSUMER_ACK_WAIT", "42s"),
            ("EVENTS_CONSUMER_MAX_ATTEMPTS", "4"),
        ])
        .unwrap();
        let running = Consumer::new(&bus, "c")
            .unwrap()
            .handle(ok)
            .settings(&settings)
            .start()
            .await
            .unwrap();
        let options = transport.options.lock().unwrap().clone();
        running.shutdown().await.unwrap();
        let options = options
            .iter()
            .find(|o| o.get_pattern().as_str() == "events.settings.job")
            .expect("the consumer subscribed");
        assert_eq!(options.get_capacity(), Some(7));
        assert_eq!(options.get_ack_wait(), Some(Duration::from_secs(42)));
        // The broker's delivery limit is the attempts plus the runtime's
        // margin of 10 (default: 5 + 10).
        assert_eq!(options.get_max_deliver(), Some(14));
    }

    #[tokio::test]
    async fn max_attempts_and_handler_timeout_from_the_environment_decide_the_dead_letter() {
        let bus = Bus::memory("settings");
        let mut dead = bus
            .transport()
            .subscribe(SubscribeOptions::new(
                SubjectPattern::parse("deadletter.events.c").unwrap(),
            ))
            .await
            .unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let seen = attempts.clone();
        let settings = from(&[
            ("EVENTS_CONSUMER_MAX_ATTEMPTS", "2"),
            ("EVENTS_CONSUMER_RETRY_INITIAL_DELAY", "1ms"),
            ("EVENTS_CONSUMER_HANDLER_TIMEOUT", "20ms"),
        ])
        .unwrap();
        let running = Consumer::new(&bus, "c")
            .unwrap()
            .handle(move |_: Event<Job>, _: Context<()>| {
                seen.fetch_add(1, Ordering::SeqCst);
                // Never finishes: only the handler timeout ends an attempt.
                std::future::pending::<Result<(), HandlerError>>()
            })
            .settings(&settings)
            .start()
            .await
            .unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("dead-lettered within 10 s")
            .expect("open")
            .unwrap();
        let letter = DeadLetter::from_message(delivery.message()).unwrap();
        assert_eq!(letter.attempts, 2);
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        running.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn the_shutdown_timeout_from_the_environment_bounds_shutdown() {
        let bus = Bus::memory("settings");
        let (started, mut has_started) = tokio::sync::mpsc::channel::<()>(1);
        let settings = from(&[("EVENTS_CONSUMER_SHUTDOWN_TIMEOUT", "50ms")]).unwrap();
        let running = Consumer::new(&bus, "c")
            .unwrap()
            .handle(move |_: Event<Job>, _: Context<()>| {
                let started = started.clone();
                async move {
                    let _ = started.send(()).await;
                    std::future::pending::<Result<(), HandlerError>>().await
                }
            })
            .settings(&settings)
            .start()
            .await
            .unwrap();
        bus.publish(&bus.event(Job { n: 1 })).await.unwrap();
        has_started.recv().await.expect("the handler started");
        // The default (30 s) would outlast this bound.
        let summary = tokio::time::timeout(Duration::from_secs(10), running.shutdown())
            .await
            .expect("shutdown within the configured timeout, not the 30 s default")
            .unwrap();
        assert_eq!((summary.handled, summary.nacked_on_shutdown), (0, 1));
    }
}
