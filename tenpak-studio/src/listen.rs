//! Accepting connections: hyper's HTTP/1 server over the routes, each request head bounded by
//! `max_header_bytes`, and every answer in the JSON error form — those hyper gives itself too.
//!
//! A request hyper cannot parse never reaches the routes: hyper answers it on its own with an
//! empty body and closes the connection — `431 Request Header Fields Too Large` for a head over
//! the bound, `414 URI Too Long`, `400 Bad Request` for a malformed request line or header.
//! Those are the only responses hyper writes without the routes, and the only 400, 414 or 431
//! with an empty body this server sends (its own refusals all carry a JSON body), so
//! [`Guarded`] recognises them in the outgoing bytes and writes the JSON form in their place.
//! Recognising them there, rather than pre-reading request heads, keeps memory per connection
//! at hyper's bound for requests of any size and on every request of a kept-alive connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use warp::{Filter, Reply};

/// hyper's automatic answers: how each starts, and the JSON refusal written instead.
type Automatic = Vec<(&'static [u8], Vec<u8>)>;

fn automatic_answers(max_header_bytes: usize) -> Automatic {
    vec![
        (
            b"HTTP/1.1 431 ".as_slice(),
            json_answer(
                "431 Request Header Fields Too Large",
                "header_too_large",
                &format!("the request line and headers exceed this server's max_header_bytes ({max_header_bytes} bytes)"),
            ),
        ),
        (b"HTTP/1.1 414 ".as_slice(), json_answer("414 URI Too Long", "uri_too_long", "the request's path and query are too long")),
        (
            b"HTTP/1.1 400 ".as_slice(),
            json_answer("400 Bad Request", "bad_request", "the request line or a header is not valid HTTP/1.1"),
        ),
    ]
}

/// A whole HTTP answer with `status` and the refusal `{"error": {code, message}}`; the
/// connection closes after it.
fn json_answer(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `routes` on `listener` until `shutdown`, then let open connections finish.
pub async fn serve<F, R>(listener: TcpListener, routes: F, max_header_bytes: usize, shutdown: CancellationToken)
where
    F: Filter<Extract = (R,), Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    R: Reply,
{
    let graceful = GracefulShutdown::new();
    let answers = std::sync::Arc::new(automatic_answers(max_header_bytes));
    loop {
        let (stream, _peer): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    eprintln!("studio: accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let io = TokioIo::new(Guarded { inner: stream, answers: answers.clone(), pending: None });
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.max_header_size(max_header_bytes).timer(hyper_util::rt::TokioTimer::new());
        let connection = graceful.watch(http.serve_connection(io, service));
        tokio::spawn(async move {
            // A client that goes away mid-request is no error of the server's.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose outgoing automatic answers are replaced by their JSON refusals.
struct Guarded {
    inner: TcpStream,
    answers: std::sync::Arc<Automatic>,
    /// The replacement being written: its index in `answers`, how much of it is out, and the
    /// length of hyper's bytes it stands for.
    pending: Option<(usize, usize, usize)>,
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none()
            && let Some(index) = this.answers.iter().position(|(start, _)| buf.starts_with(start))
            && is_empty_bodied(buf)
        {
            this.pending = Some((index, 0, buf.len()));
        }
        let Some((index, mut written, stands_for)) = this.pending else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let answer = &this.answers[index].1;
        while written < answer.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            written += n;
            this.pending = Some((index, written, stands_for));
        }
        // The whole answer is out; hyper's own bytes count as written. The connection closes
        // next (hyper closes it after this answer), so nothing follows on it.
        this.pending = None;
        Poll::Ready(Ok(stands_for))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes each response head as one flat buffer, which is what
    /// [`Guarded::poll_write`] looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Whether a response head in `buf` says its body is empty (`content-length: 0`).
fn is_empty_bodied(buf: &[u8]) -> bool {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    head.contains("\r\ncontent-length: 0\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_empty_automatic_answer_is_replaced() {
        assert!(is_empty_bodied(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n"));
        assert!(!is_empty_bodied(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 120\r\n\r\n{}"));
        for ((start, answer), code) in automatic_answers(65536).iter().zip(["header_too_large", "uri_too_long", "bad_request"]) {
            let answer = String::from_utf8(answer.clone()).unwrap();
            assert!(answer.as_bytes().starts_with(start), "{answer}");
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(parsed["error"]["code"], code);
        }
    }
}
