//! A bound on the client requests one node has in flight, over all its
//! connections.
//!
//! The per-connection limit (tonic's, with load shedding) stops one
//! connection from queueing without bound, but a thousand connections
//! could each stay under it. Past this bound a request is answered at
//! once with RESOURCE_EXHAUSTED and an `Overloaded` retry hint, before
//! its message is decoded (after its caller is authenticated), instead
//! of joining a queue that grows with the load.
//! Only the client services are wrapped: Raft and health traffic go
//! around it, so an overload of clients never starves replication.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::Status;

use crate::error::ServiceError;

/// How soon a refused client should try again.
const RETRY_AFTER_MS: u32 = 20;

/// The permits the wrapped services share.
#[derive(Clone)]
pub struct InFlight(Arc<Semaphore>);

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    pub fn wrap<S>(&self, inner: S) -> NodeLimit<S> {
        NodeLimit {
            inner,
            permits: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct NodeLimit<S> {
    inner: S,
    permits: InFlight,
}

impl<S: NamedService> NamedService for NodeLimit<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for NodeLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.permits.0.clone().try_acquire_owned() {
            Ok(permit) => {
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let r = answer.await;
                    drop(permit);
                    r
                })
            }
            Err(_) => {
                metrics::counter!("streamshield_requests_shed_total").increment(1);
                let status: Status = ServiceError::Overloaded {
                    what: "client requests in flight on this node",
                    retry_after_ms: RETRY_AFTER_MS,
                }
                .into();
                let refused = status.into_http::<R>();
                Box::pin(async move { Ok(refused) })
            }
        }
    }
}
