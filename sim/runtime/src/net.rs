//! tonic over turmoil's simulated TCP: the connector the agent's link dials with and the
//! accepted-connection stream the core's link server serves.
//!
//! Owns the adapters only; it must never change what tonic sends or when.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

/// One simulated TCP connection, as tonic's server wants it.
pub struct SimConn(pub turmoil::net::TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connections accepted on `port` of this host, for `serve_incoming`.
pub fn incoming(
    port: u16,
) -> impl tokio_stream::Stream<Item = Result<SimConn, std::io::Error>> + Send + 'static {
    futures_stream(port)
}

fn futures_stream(
    port: u16,
) -> impl tokio_stream::Stream<Item = Result<SimConn, std::io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let listener = match turmoil::net::TcpListener::bind(("0.0.0.0", port)).await {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        loop {
            let next = listener.accept().await.map(|(s, _)| SimConn(s));
            if tx.send(next).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials `endpoint`'s authority over the simulated network.
pub fn connect(
    endpoint: &Endpoint,
) -> impl Future<Output = Result<Channel, tonic::transport::Error>> + use<> {
    let endpoint = endpoint.clone();
    async move {
        endpoint
            .connect_with_connector(tower::service_fn(|uri: Uri| async move {
                let authority = uri
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_default();
                let s = turmoil::net::TcpStream::connect(authority).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }))
            .await
    }
}
