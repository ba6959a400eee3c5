//! The connection to a CRI runtime over its unix socket, and the errors a call can end in.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const DEFAULT_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// What a command can fail with: the runtime's answer (a gRPC status) or anything else.
#[derive(Debug)]
pub enum Error {
    /// `what` failed with this gRPC status, shown as crictl and kubelet show it.
    Rpc {
        what: String,
        status: tonic::Status,
    },
    /// No answer within the deadline.
    Timeout {
        what: String,
        after: Duration,
    },
    /// Writing our own output failed (a closed pipe: `| head`).
    Output(std::io::Error),
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rpc { what, status } => write!(
                f,
                "{what}: rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ),
            Error::Timeout { what, after } => write!(
                f,
                "{what}: no answer within {} s (raise --timeout)",
                after.as_secs_f64()
            ),
            Error::Output(e) => write!(f, "writing the output: {e}"),
            Error::Other(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn other(msg: impl Into<String>) -> Error {
        Error::Other(msg.into())
    }
}

/// The socket path of a `unix://` endpoint (a bare absolute path is taken too, as crictl does).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, Error> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        return Err(Error::other(format!(
            "runtime endpoint {endpoint:?}: only unix:///path/to/socket endpoints are supported"
        )));
    };
    if !path.starts_with('/') {
        return Err(Error::other(format!(
            "runtime endpoint {endpoint:?}: the socket path must be absolute (unix:///run/...)"
        )));
    }
    Ok(PathBuf::from(path))
}

/// A runtime-service client, with the deadline every call gets.
pub struct Runtime {
    pub client: RuntimeServiceClient<Channel>,
    pub timeout: Duration,
}

impl Runtime {
    /// Connects to the socket (the connection is made now, so a missing or dead socket is
    /// reported as such rather than as the first call's failure).
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Runtime, Error> {
        let path = socket_path(endpoint)?;
        if !path.exists() {
            return Err(Error::other(format!(
                "connect to {endpoint}: {} does not exist (is the runtime running?)",
                path.display()
            )));
        }
        // The URI is required by the API and unused: the connector dials the socket.
        let dial = Endpoint::from_static("http://localhost").connect_timeout(timeout);
        let channel = dial.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }));
        let channel = match tokio::time::timeout(timeout, channel).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => {
                return Err(Error::other(format!(
                    "connect to {endpoint}: {}",
                    error_chain(&e)
                )))
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("connect to {endpoint}"),
                    after: timeout,
                })
            }
        };
        Ok(Runtime {
            client: RuntimeServiceClient::new(channel),
            timeout,
        })
    }
}

/// A request carrying the deadline (grpc-timeout), so the runtime gives up when we do.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Awaits one call with a deadline; `what` names it in the error ("run pod sandbox").
pub async fn call<R>(
    what: &str,
    timeout: Duration,
    reply: impl std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
) -> Result<R, Error> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), reply).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(Error::Rpc {
            what: what.to_string(),
            status,
        }),
        Err(_) => Err(Error::Timeout {
            what: what.to_string(),
            after: timeout,
        }),
    }
}

/// An error with its causes, "a: b: c" (tonic's transport errors hide the useful part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").expect("ok"),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").expect("ok"),
            PathBuf::from("/run/x.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("").is_err());
    }

    #[test]
    fn rpc_errors_read_like_crictl() {
        let e = Error::Rpc {
            what: "run pod sandbox".into(),
            status: tonic::Status::unknown("bad annotation"),
        };
        assert_eq!(
            e.to_string(),
            "run pod sandbox: rpc error: code = Unknown desc = bad annotation"
        );
    }
}
