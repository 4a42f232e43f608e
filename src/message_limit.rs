//! The largest gRPC message a client may send (`max_message_bytes`), refused with
//! RESOURCE_EXHAUSTED, the contract's code for anything over a configured limit
//! (docs/contract.md §9).
//!
//! tonic enforces its decode limit too, but answers OUT_OF_RANGE, a code the contract keeps for
//! a download offset outside the file. This layer reads the 5-byte prefix of every gRPC message
//! in a request body as the bytes go by (compressed flag, then the big-endian length) and, as
//! soon as a prefix declares more than the limit, ends the body with a RESOURCE_EXHAUSTED
//! status instead of that message. The messages before it in the same data frame are still
//! handed on first, so a stream answers everything it was sent up to the oversized message. tonic hands a body's status on unchanged, so a unary call answers
//! with it and a streaming handler receives it from its request stream. The message is never
//! buffered; tonic's own limit stays in place behind this one.
//!
//! This layer only looks at gRPC requests (`content-type: application/grpc…`); it copies no
//! message bytes and changes nothing else about a request.

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;

/// Length of a gRPC message prefix: 1 byte compressed flag, 4 bytes length.
const PREFIX: usize = 5;

/// Installs the limit on every gRPC request body.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max: usize,
}

impl MessageLimitLayer {
    pub fn new(max_message_bytes: usize) -> Self {
        MessageLimitLayer {
            max: max_message_bytes,
        }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimitService {
            inner,
            max: self.max,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageLimitService<S> {
    inner: S,
    max: usize,
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S> tower::Service<Request<Body>> for MessageLimitService<S>
where
    S: tower::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !is_grpc(&request) {
            return self.inner.call(request);
        }
        let (parts, body) = request.into_parts();
        let body = Body::new(LimitedBody {
            inner: body,
            scanner: Scanner::new(self.max),
            pending: None,
            failed: false,
        });
        self.inner.call(Request::from_parts(parts, body))
    }
}

/// Follows the message boundaries of a gRPC body across data frames of any size.
#[derive(Debug)]
struct Scanner {
    max: usize,
    prefix: [u8; PREFIX],
    /// Prefix bytes of the current message seen so far (0 while inside a message's bytes).
    prefix_seen: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Scanner {
    fn new(max: usize) -> Self {
        Scanner {
            max,
            prefix: [0; PREFIX],
            prefix_seen: 0,
            remaining: 0,
        }
    }

    /// Advances over `data`; fails at the first prefix that declares more than the limit, with
    /// the offset in `data` where that prefix began (0 when it began in an earlier frame).
    fn scan(&mut self, data: &[u8]) -> Result<(), (Status, usize)> {
        let total = data.len();
        let mut data = data;
        while data.has_remaining() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= skip as u64;
                data.advance(skip);
                continue;
            }
            let prefix_start = (total - data.len()).saturating_sub(self.prefix_seen);
            let take = (PREFIX - self.prefix_seen).min(data.len());
            self.prefix[self.prefix_seen..self.prefix_seen + take].copy_from_slice(&data[..take]);
            self.prefix_seen += take;
            data.advance(take);
            if self.prefix_seen == PREFIX {
                self.prefix_seen = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                if len as u64 > self.max as u64 {
                    let status = Status::resource_exhausted(format!(
                        "a message of {len} bytes is over the limit of {} bytes",
                        self.max
                    ));
                    return Err((status, prefix_start));
                }
                self.remaining = u64::from(len);
            }
        }
        Ok(())
    }
}

struct LimitedBody {
    inner: Body,
    scanner: Scanner,
    /// The status to hand out at the next poll, after the bytes that preceded it.
    pending: Option<Status>,
    /// Set once the status was handed out: the body is over.
    failed: bool,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(status) = self.pending.take() {
            self.failed = true;
            return Poll::Ready(Some(Err(status)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Err((status, start)) = self.scanner.scan(data)
        {
            if start == 0 {
                self.failed = true;
                return Poll::Ready(Some(Err(status)));
            }
            // Hand on the whole messages before the oversized one, then the status.
            let before = data.slice(..start);
            self.pending = Some(status);
            return Poll::Ready(Some(Ok(Frame::data(before))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.pending.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    /// Messages at the limit pass however the body is split into frames; the first prefix over
    /// it fails, also when the prefix itself is split.
    #[test]
    fn finds_every_prefix_across_any_split() {
        let mut body = frame(10);
        body.extend(frame(0));
        body.extend(frame(10));
        let over_at = body.len();
        body.extend(frame(11));
        for split in 1..=body.len() {
            let mut scanner = Scanner::new(10);
            let mut failed_at = None;
            for (i, piece) in body.chunks(split).enumerate() {
                if let Err((status, start)) = scanner.scan(piece) {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                    assert_eq!(
                        status.message(),
                        "a message of 11 bytes is over the limit of 10 bytes"
                    );
                    failed_at = Some((i, start));
                    break;
                }
            }
            // It fails in the piece that completes the 11-byte message's prefix, and points at
            // where that prefix began: in this piece, or (0) in an earlier one.
            let last = (over_at + PREFIX - 1) / split;
            let start = over_at.saturating_sub(last * split);
            assert_eq!(failed_at, Some((last, start)), "split {split}");
        }
    }
}
