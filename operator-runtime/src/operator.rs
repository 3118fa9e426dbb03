//! What user code implements: an operator, called per record and per
//! timer with the task's [`Context`].

use std::future::Future;
use std::pin::Pin;

use crate::context::Context;
use crate::error::RuntimeError;

/// One record of a stage's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Milliseconds, as the producer stamped it.
    pub event_time: i64,
}

/// A stage's logic, one instance per task. Keyed state is reached through
/// state handles ([`crate::ValueState`] and the others) scoped to the key
/// of the record (or timer) being handled, as in Flink's keyed functions.
pub trait Operator: Send + 'static {
    fn process(
        &mut self,
        ctx: &mut Context,
        input: Input,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// An event-time timer of the current key fired: the watermark reached
    /// `time`.
    fn on_timer(
        &mut self,
        ctx: &mut Context,
        time: i64,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let _ = (ctx, time);
        std::future::ready(Ok(()))
    }
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Operator`] behind a pointer: a job's stages are operators of
/// different types.
pub(crate) trait DynOperator: Send {
    fn process_dyn<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        input: Input,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn on_timer_dyn<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        time: i64,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;
}

impl<O: Operator> DynOperator for O {
    fn process_dyn<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        input: Input,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.process(ctx, input))
    }

    fn on_timer_dyn<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        time: i64,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.on_timer(ctx, time))
    }
}

/// A stateless operator from a function: each input becomes zero or more
/// `(key, value)` records of the stage's output, with the input's event
/// time (a re-partition by the new key, as Kafka Streams' `selectKey`
/// with a repartition topic).
pub struct FlatMap<F>(pub F);

impl<F> Operator for FlatMap<F>
where
    F: FnMut(&Input) -> Vec<(Vec<u8>, Vec<u8>)> + Send + 'static,
{
    async fn process(&mut self, ctx: &mut Context, input: Input) -> Result<(), RuntimeError> {
        for (key, value) in (self.0)(&input) {
            ctx.emit(key, &value, input.event_time);
        }
        Ok(())
    }
}
