//! `GET`/`HEAD /files/{id}` without a `Tus-Resumable` header (with one, `tus` answers): downloads
//! by URL. Responses carry Content-Length, Content-Type,
//! Content-Disposition, an ETag holding the SHA-256, and support one byte range (206/416). Bytes
//! stream from disk one chunk at a time, as the client takes them, with no thread held while it
//! does not; a client that takes nothing for `--transfer-idle-secs` has its response aborted (the
//! connection is closed mid-body). With auth on, a download needs a signed, unexpired URL (403
//! otherwise; see `auth::UrlSigner`). This module only speaks HTTP; what a file is and whether it
//! is complete comes from the files service.

use crate::error::Error;
use crate::service::files::{Files, parse_file_id};
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt;

/// Bytes per read when serving HTTP: large reads keep the copy loop cheap, and at most three of
/// them exist per response (two waiting for the client, one being read), so a response that its
/// client does not read costs at most 1.5 MiB.
const HTTP_CHUNK: usize = 512 * 1024;

/// A requested byte range, resolved against the file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    Whole,
    /// Inclusive bounds, as HTTP writes them.
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a `Range` header value. Anything but a single `bytes=` range is ignored (the whole
/// file is sent), as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        // The last `n` bytes.
        return match end.parse::<u64>() {
            Ok(0) => ByteRange::Unsatisfiable,
            Ok(_) if size == 0 => ByteRange::Unsatisfiable,
            Ok(n) => ByteRange::Part(size.saturating_sub(n), size - 1),
            Err(_) => ByteRange::Whole,
        };
    }
    let Ok(start) = start.parse::<u64>() else {
        return ByteRange::Whole;
    };
    let end = if end.is_empty() {
        None
    } else {
        match end.parse::<u64>() {
            Ok(end) if end >= start => Some(end),
            _ => return ByteRange::Whole,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part(start, end.unwrap_or(size - 1).min(size - 1))
}

/// `attachment; filename="…"; filename*=UTF-8''…`: an ASCII fallback and the exact name.
fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

fn plain(status: StatusCode, message: &str) -> Response {
    (status, message.to_string()).into_response()
}

pub(super) async fn download(
    State(files): State<Files>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let id = match parse_file_id(&id) {
        Ok(id) => id,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "file id must be a UUID\n"),
    };
    // With auth on, only a signed URL opens a file; checked before the file is even looked up.
    if let Err(refusal) = files.check_download_url(&id, query.as_deref()) {
        return plain(StatusCode::FORBIDDEN, refusal.message());
    }
    // The signed URL is the capability: it reaches the file whoever holds it.
    let row = match files.readable_file(&id, None).await {
        Ok(row) => row,
        Err(Error::NotFound(_)) => return plain(StatusCode::NOT_FOUND, "no such file\n"),
        Err(Error::DataLoss(_)) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the file's bytes are missing from the server's storage\n",
            );
        }
        Err(e) => {
            tracing::error!(error = %crate::error::cause_chain(&e), "download lookup failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let etag = format!("\"{}\"", row.checksum);
    let name = if row.filename.is_empty() {
        row.file_id.clone()
    } else {
        row.filename.clone()
    };

    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        // A download shares its origin with the console: whatever the uploader declared as its
        // type, a browser must neither sniff it into something runnable nor run it (a stored
        // HTML or SVG file opened directly would otherwise script the console's origin).
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "sandbox; default-src 'none'",
        )
        .header(header::ETAG, &etag)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&row.content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
        .header(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&content_disposition(&name))
                .unwrap_or(HeaderValue::from_static("attachment")),
        );

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
    }

    let size = row.total_size;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map_or(ByteRange::Whole, |v| parse_range(v, size));
    let (status, start, len) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, size),
        ByteRange::Part(first, last) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{size}"),
            );
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        ByteRange::Unsatisfiable => {
            return response
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                .body(Body::empty())
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
        }
    };
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        let idle = files.transfer_idle();
        let chunks = files.blobs().read(id, start, len, HTTP_CHUNK, 1, idle);
        let transfers = files.transfers.clone();
        Body::from_stream(chunks.map(move |c| match c {
            Ok(bytes) => {
                transfers
                    .downloaded
                    .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(bytes::Bytes::from(bytes))
            }
            // An error aborts the response: the client sees a body shorter than its length.
            Err(failure) => Err(crate::service::files::read_error(failure, idle)),
        }))
    };
    response
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=90-500", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-500", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=x-1", 100), Whole);
    }

    #[test]
    fn content_disposition_escapes_the_name() {
        assert_eq!(
            content_disposition("report 1.pdf"),
            "attachment; filename=\"report 1.pdf\"; filename*=UTF-8''report%201.pdf"
        );
        assert_eq!(
            content_disposition("naïve\".txt"),
            "attachment; filename=\"na_ve_.txt\"; filename*=UTF-8''na%C3%AFve%22.txt"
        );
    }
}
