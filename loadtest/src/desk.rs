//! The card desk as the load test sees it: the one operator action a lunch-rush run
//! needs, reporting cards lost (挂失) in the middle of the run.
//!
//! The operator API is its own piece of the gateway; the load test reaches it only
//! through `CardDesk`, so that the run works without it (the step is skipped and the
//! report says why) and so that the request's shape lives in one place. `HttpCardDesk`
//! POSTs to an endpoint given on the command line.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use cardgate_codec::CardNo;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The most a loss report may take, connection included. The operator API answers
/// after the report is durable (one group commit); seconds mean something is wrong.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an error response body is kept for the report.
const ERROR_BODY_BYTES_MAX: usize = 512;

/// The text that `--lost-card-endpoint` replaces with the card number.
pub const CARD_PLACEHOLDER: &str = "{card}";

/// The gateway's own loss-report route (`POST /api/v1/cards/{no}/lost`) on its default
/// admin address: what `--help` shows, and what the end-to-end tests report a card lost
/// through against the real daemon, so that the example cannot name a route that does
/// not exist.
pub const LOST_CARD_ENDPOINT_EXAMPLE: &str = "http://127.0.0.1:7780/api/v1/cards/{card}/lost";

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error("the lost-card endpoint {0:?} is not an http:// URL with a host")]
    BadEndpoint(String),
    #[error("the door revoke endpoint {0:?} is not an http:// URL with a host")]
    BadRevokeEndpoint(String),
    #[error("connecting to the operator API: {0}")]
    Connect(std::io::Error),
    #[error("talking to the operator API: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the operator API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the operator API did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the run needs from the card desk.
pub trait CardDesk: Send + Sync + 'static {
    /// Reports `card` lost. `Ok` means the gateway acknowledged it: from then on every
    /// purchase with the card must be declined `card_lost`.
    fn report_lost(&self, card: CardNo) -> impl Future<Output = Result<(), DeskError>> + Send;
}

/// Reports a card lost with `POST endpoint` (where `{card}` in the endpoint becomes the
/// card number), body `{"card_no": <number>, "reason": "cardgate-loadtest"}`, and the
/// operator's bearer token when one is given. Any 2xx answer is an acknowledgement.
#[derive(Clone, Debug)]
pub struct HttpCardDesk {
    endpoint: String,
    authority: String,
    token: Option<String>,
}

impl HttpCardDesk {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<HttpCardDesk, DeskError> {
        let bad = || DeskError::BadEndpoint(endpoint.to_string());
        let uri: Uri = endpoint.replace(CARD_PLACEHOLDER, "0").parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(HttpCardDesk {
            endpoint: endpoint.to_string(),
            authority,
            token,
        })
    }

    /// The request for one card (exposed for tests and for `--help` examples).
    pub fn request_for(&self, card: CardNo) -> Result<Request<Full<Bytes>>, DeskError> {
        let uri: Uri = self
            .endpoint
            .replace(CARD_PLACEHOLDER, &card.0.to_string())
            .parse()
            .map_err(|_| DeskError::BadEndpoint(self.endpoint.clone()))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let body = format!(r#"{{"card_no":{},"reason":"cardgate-loadtest"}}"#, card.0);
        let mut req = Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(req.body(Full::new(Bytes::from(body)))?)
    }

    async fn post(&self, card: CardNo) -> Result<(), DeskError> {
        send(&self.authority, self.request_for(card)?).await
    }
}

/// Sends one request to the operator API at `authority`; any 2xx answer is `Ok`.
async fn send(authority: &str, req: Request<Full<Bytes>>) -> Result<(), DeskError> {
    let stream = TcpStream::connect(authority).await.map_err(DeskError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends when the response is read and `sender` is dropped.
    let conn = tokio::spawn(conn);
    let response = sender.send_request(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = conn.await;
    if status.is_success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&body).into_owned();
        if text.len() > ERROR_BODY_BYTES_MAX {
            let mut cut = ERROR_BODY_BYTES_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Err(DeskError::Status {
            status: status.as_u16(),
            body: text,
        })
    }
}

/// The text that `--door-revoke-endpoint` replaces with the permission id.
pub const PERMISSION_PLACEHOLDER: &str = "{id}";

/// The gateway's own revocation route on its default admin address, for `--help`.
pub const REVOKE_ENDPOINT_EXAMPLE: &str = "http://127.0.0.1:7780/api/v1/door-permissions/{id}/revoke";

/// The door admin's one action a run needs: revoking a permission with `POST endpoint`
/// (where `{id}` becomes the permission id), body `{"reason": "cardgate-loadtest"}`,
/// and the operator's bearer token when one is given. Any 2xx answer acknowledges it.
#[derive(Clone, Debug)]
pub struct HttpDoorAdmin {
    endpoint: String,
    authority: String,
    token: Option<String>,
}

impl HttpDoorAdmin {
    pub fn new(endpoint: &str, token: Option<String>) -> Result<HttpDoorAdmin, DeskError> {
        let bad = || DeskError::BadRevokeEndpoint(endpoint.to_string());
        let uri: Uri = endpoint
            .replace(PERMISSION_PLACEHOLDER, "0")
            .parse()
            .map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        Ok(HttpDoorAdmin {
            endpoint: endpoint.to_string(),
            authority,
            token,
        })
    }

    /// The request revoking permission `id`.
    pub fn request_for(&self, id: u64) -> Result<Request<Full<Bytes>>, DeskError> {
        let uri: Uri = self
            .endpoint
            .replace(PERMISSION_PLACEHOLDER, &id.to_string())
            .parse()
            .map_err(|_| DeskError::BadRevokeEndpoint(self.endpoint.clone()))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let mut req = Request::post(path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        Ok(req.body(Full::new(Bytes::from_static(br#"{"reason":"cardgate-loadtest"}"#)))?)
    }

    /// Revokes permission `id`; `Ok` once the gateway acknowledged it.
    pub async fn revoke(&self, id: u64) -> Result<(), DeskError> {
        let req = self.request_for(id)?;
        tokio::time::timeout(REPORT_TIMEOUT, send(&self.authority, req))
            .await
            .map_err(|_| DeskError::Timeout(REPORT_TIMEOUT))?
    }
}

impl CardDesk for HttpCardDesk {
    async fn report_lost(&self, card: CardNo) -> Result<(), DeskError> {
        tokio::time::timeout(REPORT_TIMEOUT, self.post(card))
            .await
            .map_err(|_| DeskError::Timeout(REPORT_TIMEOUT))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn endpoint_must_be_http_with_a_host() {
        assert!(HttpCardDesk::new("https://x/cards/{card}/lost", None).is_err());
        assert!(HttpCardDesk::new("/cards/{card}/lost", None).is_err());
        assert!(HttpCardDesk::new("not a url", None).is_err());
        let d = HttpCardDesk::new("http://127.0.0.1:9800/v1/cards/{card}/report-lost", None).unwrap();
        assert_eq!(d.authority, "127.0.0.1:9800");
        let d = HttpCardDesk::new("http://localhost/lost", None).unwrap();
        assert_eq!(d.authority, "localhost:80");
    }

    #[test]
    fn the_card_number_goes_into_path_and_body_and_the_token_into_the_header() {
        let d = HttpCardDesk::new(
            "http://127.0.0.1:9800/v1/cards/{card}/report-lost",
            Some("s3cret".into()),
        )
        .unwrap();
        let req = d.request_for(CardNo(1_000_000_042)).unwrap();
        assert_eq!(req.uri().path(), "/v1/cards/1000000042/report-lost");
        assert_eq!(req.headers()[hyper::header::AUTHORIZATION], "Bearer s3cret");
        assert_eq!(req.headers()[hyper::header::HOST], "127.0.0.1:9800");
        let body = req.body().clone();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(body.collect()).unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["card_no"], 1_000_000_042u64);
    }

    /// A one-shot HTTP server answering `status`; returns its address and the request
    /// text it received.
    async fn one_shot(status: &'static str) -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // Headers, then the JSON body, arrive in one or two reads on loopback.
            while !String::from_utf8_lossy(&got).contains("cardgate-loadtest") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let body = "nope";
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_2xx_answer_is_an_acknowledgement() {
        let (addr, server) = one_shot("200 OK").await;
        let d = HttpCardDesk::new(&format!("http://{addr}/cards/{{card}}/lost"), None).unwrap();
        d.report_lost(CardNo(1_000_000_007)).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("POST /cards/1000000007/lost HTTP/1.1"), "{request}");
    }

    #[tokio::test]
    async fn any_other_answer_is_an_error_with_its_status() {
        let (addr, _server) = one_shot("404 Not Found").await;
        let d = HttpCardDesk::new(&format!("http://{addr}/cards/{{card}}/lost"), None).unwrap();
        match d.report_lost(CardNo(1)).await {
            Err(DeskError::Status { status: 404, body }) => assert_eq!(body, "nope"),
            other => panic!("expected a 404 error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_revocation_posts_to_the_permission_with_the_token() {
        let (addr, server) = one_shot("200 OK").await;
        let admin = HttpDoorAdmin::new(
            &format!("http://{addr}/api/v1/door-permissions/{{id}}/revoke"),
            Some("t0ken".into()),
        )
        .unwrap();
        admin.revoke(17).await.unwrap();
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /api/v1/door-permissions/17/revoke HTTP/1.1"),
            "{request}"
        );
        assert!(
            request.to_ascii_lowercase().contains("authorization: bearer t0ken"),
            "{request}"
        );
        assert!(HttpDoorAdmin::new("https://x/{id}", None).is_err());
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let d = HttpCardDesk::new(&format!("http://{addr}/lost/{{card}}"), None).unwrap();
        assert!(matches!(d.report_lost(CardNo(1)).await, Err(DeskError::Connect(_))));
    }
}
