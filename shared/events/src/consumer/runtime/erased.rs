//! Handlers of different event types behind one object-safe trait: each
//! decodes the event into its type and calls the user's handler.

use std::marker::PhantomData;
use std::sync::Arc;

use std::panic::AssertUnwindSafe;

use super::HandlerFuture;
use crate::consumer::handler::{Context, Env, Handler, HandlerError};
use crate::consumer::layer::{layered, Layer};
use crate::envelope::{Cause, Event, EventMetadata, EventPayload};
use crate::error::Result;
use crate::transport::Message;
use crate::versioning::VersionPolicy;
use crate::wire::{self, RawEvent};

/// A type-erased handler: decodes the raw event into its type, then calls
/// the user's handler.
pub(super) trait ErasedHandler<S>: Send + Sync {
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<'_, S>,
    ) -> Result<HandlerFuture>;

    /// The fast path: `message` decoded in one pass straight into the
    /// handler's type (see `wire::decode_fast`) and the handler called, in
    /// the span `span` makes; `None` where that does not apply.
    fn try_call(
        &self,
        message: &Message,
        env: &Arc<Env<S>>,
        attempt: u32,
        layers: &[Arc<dyn Layer>],
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)>;
}

pub(super) struct ContextParts<'a, S> {
    pub(super) env: Arc<Env<S>>,
    pub(super) attempt: u32,
    /// The consumer's layers, outermost first.
    pub(super) layers: &'a [Arc<dyn Layer>],
}

pub(super) struct Typed<T, H> {
    pub(super) handler: H,
    pub(super) _type: PhantomData<fn() -> T>,
}

impl<T, S, H> ErasedHandler<S> for Typed<T, H>
where
    T: EventPayload,
    S: Send + 'static,
    H: Handler<T, S>,
{
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<'_, S>,
    ) -> Result<HandlerFuture> {
        let decoded = raw.into_event::<T>(&ctx.env.bus.inner().upcasters, policy)?;
        let context = Context::new(ctx.env, ctx.attempt, Cause::of(&decoded.event.metadata));
        Ok(self.call(decoded.event, context, ctx.layers))
    }

    fn try_call(
        &self,
        message: &Message,
        env: &Arc<Env<S>>,
        attempt: u32,
        layers: &[Arc<dyn Layer>],
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)> {
        // A panic in the payload's `Deserialize` is left to the general
        // path, which decodes again, catches it and dead-letters the event.
        // Written in place rather than returned through `catch_unwind`: an
        // event is large, and each move of it is a copy.
        let mut decoded = None;
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            decoded = wire::decode_fast::<T>(message);
        }))
        .ok()?;
        let event = decoded?;
        let span = span(&event.metadata);
        let context = Context::new(env.clone(), attempt, Cause::of(&event.metadata));
        let future = {
            let _entered = span.enter();
            self.call(event, context, layers)
        };
        Some((span, future))
    }
}

impl<T: EventPayload, H> Typed<T, H> {
    /// Calls the handler. Its synchronous part (a closure may do work
    /// before returning its future) runs here: a panic there fails the
    /// attempt, as a panic in its future does, and the handler is not
    /// called again for it. With `layers`, the call goes through them
    /// (outermost first), and a panic in a layer counts as the handler's.
    pub(super) fn call<S>(
        &self,
        event: Event<T>,
        context: Context<S>,
        layers: &[Arc<dyn Layer>],
    ) -> HandlerFuture
    where
        H: Handler<T, S>,
    {
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if layers.is_empty() {
                self.handler.call(event, context)
            } else {
                let attempt = context.attempt();
                layered(layers, T::TYPE, attempt, || {
                    self.handler.call(event, context)
                })
            }
        }));
        match called {
            Ok(future) => future,
            Err(panic) => Box::pin(std::future::ready(Err(panicked(&*panic)))),
        }
    }
}

/// A handler registered before [`Consumer::state`] changed the state's
/// type: it keeps the state (and context) it was registered with, since its
/// signature names that type.
pub(super) struct Restated<S> {
    pub(super) handler: Arc<dyn ErasedHandler<S>>,
    pub(super) env: Arc<Env<S>>,
}

impl<S: Send + Sync + 'static, S2> ErasedHandler<S2> for Restated<S> {
    fn prepare(
        &self,
        raw: RawEvent,
        policy: VersionPolicy,
        ctx: ContextParts<'_, S2>,
    ) -> Result<HandlerFuture> {
        let parts = ContextParts {
            env: self.env.clone(),
            attempt: ctx.attempt,
            layers: ctx.layers,
        };
        self.handler.prepare(raw, policy, parts)
    }

    fn try_call(
        &self,
        message: &Message,
        _env: &Arc<Env<S2>>,
        attempt: u32,
        layers: &[Arc<dyn Layer>],
        span: &dyn Fn(&EventMetadata) -> tracing::Span,
    ) -> Option<(tracing::Span, HandlerFuture)> {
        self.handler
            .try_call(message, &self.env, attempt, layers, span)
    }
}

pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// The retryable error a panicking handler becomes.
pub(super) fn panicked(panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let text = panic_text(panic);
    tracing::error!(panic = %text, "handler panicked");
    HandlerError::retry(format!("handler panicked: {text}"))
}
