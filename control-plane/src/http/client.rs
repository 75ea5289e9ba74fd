//! The control plane's own outgoing HTTP/1.1 requests, plain or TLS: fetching a SPIFFE bundle,
//! checking an external SPIRE's health, delivering alert notifications. One connection per
//! request (these are rare or batched), a timeout and a bound on the answer's size.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// One outgoing request.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub method: hyper::Method,
    pub url: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Trust anchors for `https://`; `None`: the web PKI.
    pub roots: Option<rustls::RootCertStore>,
    pub timeout: Duration,
    /// Longest answer read.
    pub max_response: usize,
}

impl<'a> Outgoing<'a> {
    /// A GET of `url` with the web PKI, a 10 s timeout and answers up to 1 MiB.
    pub fn get(url: &'a str) -> Outgoing<'a> {
        Outgoing {
            method: hyper::Method::GET,
            url,
            headers: Vec::new(),
            body: Vec::new(),
            roots: None,
            timeout: Duration::from_secs(10),
            max_response: 1 << 20,
        }
    }

    /// A POST of `body` (`content_type`) to `url`, otherwise as [`Outgoing::get`].
    pub fn post(url: &'a str, content_type: &str, body: Vec<u8>) -> Outgoing<'a> {
        Outgoing {
            method: hyper::Method::POST,
            headers: vec![("content-type", content_type.to_owned())],
            body,
            ..Outgoing::get(url)
        }
    }
}

/// Sends `req`; returns the status and the body, or why there is none (the message names the
/// URL).
pub async fn send(req: Outgoing<'_>) -> Result<(u16, Vec<u8>), String> {
    let url = req.url.to_owned();
    let timeout = req.timeout;
    tokio::time::timeout(timeout, send_inner(req))
        .await
        .map_err(|_| format!("{url}: no answer within {} s", timeout.as_secs_f32()))?
}

async fn send_inner(req: Outgoing<'_>) -> Result<(u16, Vec<u8>), String> {
    let url = req.url;
    let err = |e: &dyn std::fmt::Display| format!("{url}: {e}");
    let uri: hyper::Uri = url.parse().map_err(|e| err(&e))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(err(&"only http:// and https:// URLs")),
    };
    let host = uri.host().ok_or_else(|| err(&"no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((connect_host.as_str(), port))
        .await
        .map_err(|e| err(&e))?;
    let _ = tcp.set_nodelay(true);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(path)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("hais-control-plane/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &req.headers {
        builder = builder.header(*name, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body)))
        .map_err(|e| err(&e))?;
    let max = req.max_response;
    if tls {
        let config = tls_client_config(req.roots).map_err(|e| err(&e))?;
        let name = rustls::pki_types::ServerName::try_from(connect_host).map_err(|e| err(&e))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| err(&e))?;
        exchange(TokioIo::new(stream), request, max)
            .await
            .map_err(|e| err(&e))
    } else {
        exchange(TokioIo::new(tcp), request, max)
            .await
            .map_err(|e| err(&e))
    }
}

/// A TLS client configuration (ring, no client certificate) trusting `roots`, or the web PKI
/// when `None`: what the control plane's outgoing connections (HTTPS, syslog over TLS) use.
pub fn tls_client_config(
    roots: Option<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let roots = roots.unwrap_or_else(|| {
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trust anchors from PEM text (one or more `CERTIFICATE` blocks).
pub fn roots_from_pem(text: &str) -> Result<rustls::RootCertStore, String> {
    let bundle = hais_svid::Bundle::from_pem(text).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in bundle.certs {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

async fn exchange<T>(
    io: T,
    req: hyper::Request<Full<Bytes>>,
    max: usize,
) -> Result<(u16, Vec<u8>), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map(|b| (status, b.to_bytes().to_vec()))
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}
