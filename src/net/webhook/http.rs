//! One webhook exchange: a POST over a fresh TCP (and TLS) connection with hyper's
//! HTTP/1.1 client, the answer read up to [`MAX_ANSWER`] bytes. No connection pool:
//! lookups are rare next to the cache hits, and a fresh connection per lookup keeps
//! no state between them (a pool would be one more bounded map to get right).

use super::Settings;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::pin::pin;

/// The largest answer read; a larger one (by Content-Length or as it streams in) is
/// refused after at most this many bytes.
pub const MAX_ANSWER: usize = 64 * 1024;
/// hyper's read buffer, which bounds the status line and headers.
const MAX_HEADERS: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The answer was larger than [`MAX_ANSWER`].
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
}

fn transport(e: impl std::fmt::Display) -> ExchangeError {
    ExchangeError::Transport(e.to_string())
}

/// POSTs `body` (JSON) to the configured URL; the status and the answer's body.
pub async fn post(settings: &Settings, body: Vec<u8>) -> Result<(StatusCode, Bytes), ExchangeError> {
    let uri = &settings.uri;
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(transport)?;
    let _ = tcp.set_nodelay(true);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, uri.authority().map_or("", |a| a.as_str()))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, concat!("turnd/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close");
    if let Some(token) = &settings.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(transport)?;
    match &settings.tls {
        Some(tls) => {
            let name = ServerName::try_from(host).map_err(transport)?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(transport)?;
            exchange(TokioIo::new(stream), request).await
        }
        None => exchange(TokioIo::new(tcp), request).await,
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), ExchangeError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADERS)
        .handshake::<_, Full<Bytes>>(io)
        .await
        .map_err(transport)?;
    let answer = async move {
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_ANSWER as u64) {
            return Err(ExchangeError::TooLarge);
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ExchangeError::TooLarge
            } else {
                ExchangeError::Transport(e.to_string())
            }
        })?;
        Ok((status, body.to_bytes()))
    };
    // The connection is driven in this same task (nothing outlives the lookup's
    // timeout): until the answer is in, or until it ends, then the answer finishes.
    let (mut connection, mut answer) = (pin!(connection), pin!(answer));
    tokio::select! {
        result = &mut answer => return result,
        _ = &mut connection => {}
    }
    answer.await
}
