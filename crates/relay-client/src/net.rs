//! The network layer: parse a relay URL, open TCP (TCP_NODELAY on) with TLS when the
//! scheme asks for it, run a WebSocket handshake over that stream, or make one HTTP/1.1
//! request. Every step is bounded by the configured timeouts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// A relay base address: scheme (TLS or not), host, port and a path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// Path prefix without a trailing slash ("" for the root), so a relay mounted under
    /// `/relay` behind a proxy works.
    prefix: String,
}

impl Endpoint {
    /// Parses `ws://`, `wss://`, `http://` or `https://` URLs; a query is refused.
    pub(crate) fn parse(url: &str) -> Result<Endpoint> {
        let bad = |reason: &str| Error::InvalidUrl { url: url.to_owned(), reason: reason.to_owned() };
        let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("ws" | "http") => false,
            Some("wss" | "https") => true,
            _ => return Err(bad("scheme must be ws, wss, http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query"));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint { tls, host, port, prefix })
    }

    /// The path prefix ("" for the root).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host as it goes in a URL or Host header (IPv6 in brackets), with the port.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `ws(s)://host:port{path_and_query}`.
    pub(crate) fn ws_url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", if self.tls { "wss" } else { "ws" }, self.authority(), path_and_query)
    }

    /// Opens TCP (and TLS for wss/https), bounded by `config.connect_timeout`.
    async fn open(&self, config: &ClientConfig) -> Result<Stream> {
        let fut = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            if !self.tls {
                return Ok(Stream::Plain(tcp));
            }
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| Error::InvalidUrl { url: self.host.clone(), reason: e.to_string() })?;
            let connector = TlsConnector::from(config.tls.rustls_config()?);
            let tls = connector.connect(name, tcp).await.map_err(tls_io_error)?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        tokio::time::timeout(config.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout { what: "connect", after: config.connect_timeout })?
    }

    /// Opens a WebSocket to `path_and_query`, the API key added as the config says.
    pub(crate) async fn websocket(
        &self,
        path_and_query: &str,
        config: &ClientConfig,
        send_key: bool,
    ) -> Result<WebSocketStream<Stream>> {
        let mut target = format!("{}{path_and_query}", self.prefix);
        let mut auth_header = None;
        if let (true, Some(key)) = (send_key, &config.api_key) {
            if let Some(pair) = key.query_pair() {
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str(&pair);
            }
            auth_header = key.header_value();
        }
        let mut request = self.ws_url(&target).into_client_request().map_err(Error::from_ws)?;
        if let Some(v) = auth_header {
            let v = http::HeaderValue::from_str(&v)
                .map_err(|_| Error::InvalidArgument("the API key is not a valid header value".into()))?;
            request.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let fut = async {
            let stream = self.open(config).await?;
            let (ws, _resp) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
                .await
                .map_err(Error::from_ws)?;
            Ok(ws)
        };
        tokio::time::timeout(config.connect_timeout, fut)
            .await
            .map_err(|_| Error::Timeout { what: "websocket connect", after: config.connect_timeout })?
    }

    /// One HTTP/1.1 request with a JSON body; returns the body of a 2xx answer and maps
    /// anything else to its [`Error`] variant.
    pub(crate) async fn request_json(
        &self,
        method: http::Method,
        path: &str,
        body: &serde_json::Value,
        config: &ClientConfig,
    ) -> Result<Bytes> {
        let mut target = format!("{}{path}", self.prefix);
        let mut builder = http::Request::builder()
            .method(method)
            .header(http::header::HOST, self.authority())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &config.api_key {
            if let Some(pair) = key.query_pair() {
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str(&pair);
            }
            if let Some(v) = key.header_value() {
                builder = builder.header(http::header::AUTHORIZATION, v);
            }
        }
        let request = builder
            .uri(target)
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let fut = async {
            let stream = self.open(config).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Error::Http(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let resp = sender.send_request(request).await.map_err(|e| Error::Http(e.to_string()))?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| Error::Http(e.to_string()))?.to_bytes();
            conn.abort();
            if status.is_success() { Ok(bytes) } else { Err(Error::from_http(status.as_u16(), &bytes)) }
        };
        tokio::time::timeout(config.request_timeout, fut)
            .await
            .map_err(|_| Error::Timeout { what: "http request", after: config.request_timeout })?
    }
}

/// rustls reports handshake failures as `io::Error` wrapping a `rustls::Error`; unwrap
/// it so a bad certificate is [`Error::Tls`], not a network error.
fn tls_io_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        let inner = e.into_inner().expect("checked above");
        match inner.downcast::<rustls::Error>() {
            Ok(tls) => Error::Tls(*tls),
            Err(other) => Error::Io(io::Error::other(other)),
        }
    } else {
        Error::Io(e)
    }
}

/// A TCP stream, with TLS or without.
#[derive(Debug)]
pub(crate) enum Stream {
    /// `ws://` / `http://`.
    Plain(TcpStream),
    /// `wss://` / `https://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_ports_and_prefixes() {
        let e = Endpoint::parse("wss://relay.example.com").unwrap();
        assert_eq!(e, Endpoint { tls: true, host: "relay.example.com".into(), port: 443, prefix: "".into() });
        let e = Endpoint::parse("http://127.0.0.1:8080/relay/").unwrap();
        assert_eq!(e.ws_url("/v1/rooms/x"), "ws://127.0.0.1:8080/v1/rooms/x");
        assert_eq!(e.prefix(), "/relay");
        let e = Endpoint::parse("ws://[::1]:9000").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.ws_url("/"), "ws://[::1]:9000/");
        assert!(matches!(Endpoint::parse("ftp://x"), Err(Error::InvalidUrl { .. })));
        assert!(matches!(Endpoint::parse("ws://x/?a=b"), Err(Error::InvalidUrl { .. })));
    }
}
