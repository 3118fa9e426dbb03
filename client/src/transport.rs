//! What every call of a client goes through: its channel to one node and,
//! for a client without a certificate, its bearer token on every request.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A channel whose requests carry the client's bearer token, if it has one.
pub type Transport = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone, Default)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header value for `token`; `None` if it cannot be a header.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(Self(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| Self(Some(v)))
                .map_err(|_| "a token must be printable ASCII".to_string()),
        }
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}
