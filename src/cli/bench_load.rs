//! The load generator's HTTP/1.1 client: one keep-alive connection, one request at a time, the
//! request written as prepared bytes and the answer read back with no more parsing than its
//! status, its length and its body.
//!
//! A general client (reqwest) spent about as much CPU per request as the server it measured (a
//! header map, a URL, a pool lookup, a body type per request), and on two cores that CPU is taken
//! from the server: the figure was partly the generator's. This is what wrk does instead, so the
//! bench's figure is comparable with one taken from outside.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: its status code and its body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read past the answer being parsed (none, with one request in flight).
    buf: Vec<u8>,
}

/// The request bytes of a POST with the given headers and body.
pub fn post(host: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Connection {
    pub async fn open(addr: std::net::SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` (from [`post`]) and reads its answer.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await?;
        };
        let head =
            std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("a head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| bad("content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.chunked().await?
        } else {
            let length = length.unwrap_or(0);
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        };
        Ok(Answer { status, body })
    }

    /// A chunked body, from the start of its first chunk's size line.
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size = std::str::from_utf8(&self.buf[..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| bad("a chunk size"))?;
            // The chunk, then its CRLF (after the last, empty chunk: the final CRLF).
            while self.buf.len() < line_end + 2 + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a real server (axum, as the bench's baseline): a fixed-length answer and a
    /// chunked one, several on one connection.
    #[tokio::test]
    async fn reads_answers_of_both_framings_on_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route(
                "/fixed",
                axum::routing::post(|body: axum::body::Bytes| async move {
                    (
                        axum::http::StatusCode::ACCEPTED,
                        format!("got {}", body.len()),
                    )
                }),
            )
            .route(
                "/chunked",
                axum::routing::post(|| async {
                    let parts = futures_util::stream::iter(
                        ["ab", "", "cde"].map(|s| Ok::<_, io::Error>(s.to_string())),
                    );
                    axum::body::Body::from_stream(parts)
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut c = Connection::open(addr).await.expect("connect");
        for _ in 0..3 {
            let a = c
                .send(&post("x", "/fixed", &[("x-a", "1")], b"12345"))
                .await
                .expect("fixed");
            assert_eq!((a.status, a.body.as_slice()), (202, &b"got 5"[..]));
            let a = c
                .send(&post("x", "/chunked", &[], b""))
                .await
                .expect("chunked");
            assert_eq!((a.status, a.body.as_slice()), (200, &b"abcde"[..]));
        }
    }
}
