//! tus 1.0.0 uploads under `/files/`: the core protocol with the creation,
//! creation-with-upload, termination, expiration and checksum extensions, and the dispatch of
//! `/files/{id}` between tus and plain downloads.
//!
//! A request carrying `Tus-Resumable` is tus, authorised by bearer token (the same verifier as
//! the gRPC calls; open with auth off), except OPTIONS, which needs neither. Without that header
//! GET and HEAD on `/files/{id}` are downloads authorised by signed URL (`download`), and any
//! other method gets 412, as tus asks. Every tus answer carries `Tus-Resumable: 1.0.0`.
//!
//! This module only speaks HTTP: it reads headers into the files service's terms and turns its
//! answers and errors into tus status codes. A tus upload is an ordinary file of the files
//! service (same rows, ids, quotas, owners, checks and pipeline as UploadFile), so nothing here
//! touches bytes on disk or the store, and nothing here may answer for an upload the caller does
//! not reach with anything but 404. It never echoes a token, a path or SQL.

use crate::auth::{Identity, Verifier};
use crate::files::ChunkAlgorithm;
use crate::service::files::{Files, TusChunk, TusCreate, TusUpload};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use uuid::Uuid;

/// The one protocol version served.
const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
const TUS_CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The media type of every PATCH body (and of a creation-with-upload body).
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Longest `Upload-Metadata` accepted, in bytes: it is stored with the upload and sent back.
const MAX_METADATA_BYTES: usize = 8 * 1024;

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION_HEADER: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_CONCAT: HeaderName = HeaderName::from_static("upload-concat");
const METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");

/// tus's own status for a checksum that does not match.
const CHECKSUM_MISMATCH: u16 = 460;

/// Base64 as tus clients write it: the standard alphabet, padded or not.
const BASE64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What every tus route needs.
#[derive(Clone)]
struct Tus {
    files: Files,
    /// Checks bearer tokens; `None` when auth is off.
    verifier: Option<Arc<Verifier>>,
}

/// Every `/files` route: tus creation on `/files` and `/files/`, and `/files/{id}` for tus and
/// downloads alike.
pub(super) fn router(files: Files, verifier: Option<Arc<Verifier>>) -> Router {
    Router::new()
        .route(
            "/files",
            post(create).options(options).fallback(not_creation),
        )
        .route(
            "/files/",
            post(create).options(options).fallback(not_creation),
        )
        .route("/files/{id}", any(resource))
        .with_state(Tus { files, verifier })
}

/// A tus answer: `status` with `Tus-Resumable`, and a short text body for errors.
fn answer(status: StatusCode, message: &str) -> Response {
    let mut response = if message.is_empty() {
        status.into_response()
    } else {
        (status, format!("{message}\n")).into_response()
    };
    response
        .headers_mut()
        .insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    response
}

/// A request refused before the files service is asked: its status, why, and at most one more
/// header (`Tus-Version` on a 412, `WWW-Authenticate` on a 401).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
    header: Option<(HeaderName, &'static str)>,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            header: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = answer(self.status, &self.message);
        if let Some((name, value)) = self.header {
            set(&mut response, name, value);
        }
        response
    }
}

fn set(response: &mut Response, name: HeaderName, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, value);
    }
}

/// The offset, length, metadata and expiry headers of an upload.
fn describe(response: &mut Response, upload: &TusUpload) {
    set(response, UPLOAD_OFFSET, upload.offset);
    set(response, UPLOAD_LENGTH, upload.length);
    if let Some(expires) = upload.expires_at_micros {
        let at = UNIX_EPOCH + Duration::from_micros(expires.max(0) as u64);
        set(response, UPLOAD_EXPIRES, httpdate::fmt_http_date(at));
    }
}

/// The tus status of a files-service error, with its client-facing message (storage faults are
/// logged and reach the client as "internal error", as everywhere else).
fn failure(error: crate::error::Error) -> Response {
    let status = tonic::Status::from(error);
    let code = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::Aborted => StatusCode::LOCKED,
        tonic::Code::DataLoss => {
            StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST)
        }
        // A full disk is the server's trouble, not the request's size.
        tonic::Code::ResourceExhausted if status.message() == "server storage is full" => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        tonic::Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        tonic::Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    answer(code, status.message())
}

/// `Tus-Resumable` must name the version served; otherwise 412 with `Tus-Version`, and the
/// request is not looked at further.
fn check_version(headers: &HeaderMap) -> Result<(), Refusal> {
    let version = headers
        .get(TUS_RESUMABLE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if version == Some(TUS_VERSION) {
        return Ok(());
    }
    Err(Refusal {
        header: Some((TUS_VERSION_HEADER, TUS_VERSION)),
        ..Refusal::new(
            StatusCode::PRECONDITION_FAILED,
            "this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0",
        )
    })
}

impl Tus {
    /// The caller: `None` with auth off; with auth on a checked bearer token, or 401.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Identity>, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        match verifier.authenticate(headers) {
            Ok(identity) => Ok(Some(identity)),
            Err(reason) => {
                tracing::debug!(%reason, "tus request refused");
                Err(Refusal {
                    header: Some((header::WWW_AUTHENTICATE, "Bearer")),
                    ..Refusal::new(StatusCode::UNAUTHORIZED, reason)
                })
            }
        }
    }

    /// Version, then token: what every tus request but OPTIONS passes first.
    fn admit(&self, headers: &HeaderMap) -> Result<Option<Identity>, Refusal> {
        check_version(headers)?;
        self.authenticate(headers)
    }
}

/// Any other method on the creation URL.
async fn not_creation() -> Response {
    let mut response = answer(
        StatusCode::METHOD_NOT_ALLOWED,
        "the creation URL answers POST and OPTIONS",
    );
    set(&mut response, header::ALLOW, "POST, OPTIONS");
    response
}

/// OPTIONS: what this server offers. Needs no token and no `Tus-Resumable`.
async fn options(State(tus): State<Tus>) -> Response {
    capabilities(&tus)
}

fn capabilities(tus: &Tus) -> Response {
    let mut response = answer(StatusCode::NO_CONTENT, "");
    set(&mut response, TUS_VERSION_HEADER, TUS_VERSION);
    set(&mut response, TUS_EXTENSION, TUS_EXTENSIONS);
    set(&mut response, TUS_MAX_SIZE, tus.files.max_upload_bytes());
    set(
        &mut response,
        TUS_CHECKSUM_ALGORITHM,
        TUS_CHECKSUM_ALGORITHMS,
    );
    response
}

/// A header that must be a non-negative decimal integer: `Ok(None)` when absent, 400 when it is
/// anything else.
fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, Refusal> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::bad(format!(
            "{name} must be a non-negative integer"
        )));
    }
    text.parse().map(Some).map_err(|_| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{name} is too large"),
        )
    })
}

/// Whether the body is declared as `application/offset+octet-stream`.
fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

/// Whether a request has a body at all: a `Content-Length` above 0, or a chunked one.
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) => length > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// `Upload-Checksum: <algorithm> <base64 digest>`: sha1 or sha256; another algorithm, or a
/// digest that is not one of that algorithm, is 400.
fn chunk_checksum(headers: &HeaderMap) -> Result<Option<(ChunkAlgorithm, Vec<u8>)>, Refusal> {
    let Some(value) = headers.get(UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let bad = |message: &str| Refusal::bad(message);
    let text = value
        .to_str()
        .map_err(|_| bad("Upload-Checksum must be `<algorithm> <base64 digest>`"))?;
    let (name, digest) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("Upload-Checksum must be `<algorithm> <base64 digest>`"))?;
    let algorithm = if name.eq_ignore_ascii_case("sha1") {
        ChunkAlgorithm::Sha1
    } else if name.eq_ignore_ascii_case("sha256") {
        ChunkAlgorithm::Sha256
    } else {
        return Err(bad(&format!(
            "checksum algorithm {name:?} is not supported; Tus-Checksum-Algorithm: \
             {TUS_CHECKSUM_ALGORITHMS}"
        )));
    };
    let digest = BASE64_ANY_PADDING
        .decode(digest.trim())
        .ok()
        .filter(|d| d.len() == algorithm.digest_len())
        .ok_or_else(|| bad(&format!("Upload-Checksum is not a base64 {name} digest")))?;
    Ok(Some((algorithm, digest)))
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be left out), keys
/// non-empty, unique, without spaces or commas. `filename`, `filetype` and `checksum` are read
/// (UTF-8); every pair is kept as sent.
fn metadata(headers: &HeaderMap, create: &mut TusCreate) -> Result<(), Refusal> {
    let Some(value) = headers.get(UPLOAD_METADATA) else {
        return Ok(());
    };
    let bad = |message: &str| Refusal::bad(message);
    let text = value
        .to_str()
        .map_err(|_| bad("Upload-Metadata must be ASCII"))?
        .trim();
    if text.len() > MAX_METADATA_BYTES {
        return Err(bad(&format!(
            "Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !seen.insert(key) {
            return Err(bad(&format!(
                "Upload-Metadata keys must be non-empty and unique ({key:?})"
            )));
        }
        let value = BASE64_ANY_PADDING
            .decode(value.trim())
            .map_err(|_| bad(&format!("Upload-Metadata value of {key:?} is not base64")))?;
        let field = match key {
            "filename" => &mut create.filename,
            "filetype" => &mut create.filetype,
            "checksum" => &mut create.checksum,
            _ => continue,
        };
        *field = String::from_utf8(value)
            .map_err(|_| bad(&format!("Upload-Metadata value of {key:?} is not UTF-8")))?;
    }
    create.metadata = text.to_string();
    Ok(())
}

/// POST `/files/` (creation, and creation-with-upload for an `application/offset+octet-stream`
/// body): 201 with an absolute `Location` (`<public URL>/files/<uuid>`), `Upload-Offset` and
/// `Upload-Expires`.
async fn create(State(tus): State<Tus>, request: Request) -> Response {
    let headers = request.headers().clone();
    let identity = match tus.admit(&headers) {
        Ok(identity) => identity,
        Err(refused) => return refused.into_response(),
    };
    if headers.contains_key(UPLOAD_DEFER_LENGTH) {
        return answer(
            StatusCode::BAD_REQUEST,
            "creation-defer-length is not supported: send Upload-Length",
        );
    }
    if headers.contains_key(UPLOAD_CONCAT) {
        return answer(
            StatusCode::BAD_REQUEST,
            "concatenation is not supported (Tus-Extension lists what is)",
        );
    }
    let length = match number(&headers, &UPLOAD_LENGTH) {
        Ok(Some(length)) => length,
        Ok(None) => return answer(StatusCode::BAD_REQUEST, "Upload-Length is required"),
        Err(refused) => return refused.into_response(),
    };
    if length > tus.files.max_upload_bytes() {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Upload-Length {length} is over Tus-Max-Size {}",
                tus.files.max_upload_bytes()
            ),
        );
    }
    let mut creation = TusCreate {
        length,
        ..Default::default()
    };
    if let Err(refused) = metadata(&headers, &mut creation) {
        return refused.into_response();
    }
    let body = if is_offset_stream(&headers) {
        let chunk = match body_chunk(&headers, 0) {
            Ok(chunk) => chunk,
            Err(refused) => return refused.into_response(),
        };
        if chunk.content_length.is_some_and(|len| len > length) {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the creation body is longer than Upload-Length",
            );
        }
        Some((chunk, request.into_body().into_data_stream()))
    } else if has_body(&headers) {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a creation body must be Content-Type: application/offset+octet-stream",
        );
    } else {
        None
    };
    match tus.files.tus_create(creation, identity, body).await {
        Ok((upload, outcome)) => {
            let mut response = match outcome {
                None => answer(StatusCode::CREATED, ""),
                Some(error) => failure(error),
            };
            set(
                &mut response,
                header::LOCATION,
                tus.files.upload_url(&upload.id),
            );
            describe(&mut response, &upload);
            response
        }
        Err(error) => failure(error),
    }
}

/// The offset, length and checksum headers of a body about to be written at `offset`.
fn body_chunk(headers: &HeaderMap, offset: u64) -> Result<TusChunk, Refusal> {
    Ok(TusChunk {
        offset,
        content_length: number(headers, &header::CONTENT_LENGTH)?,
        checksum: chunk_checksum(headers)?,
    })
}

/// `/files/{id}`: tus HEAD, PATCH and DELETE when the request carries `Tus-Resumable` (and
/// OPTIONS either way); otherwise GET and HEAD are downloads, exactly as before tus.
async fn resource(
    State(tus): State<Tus>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let is_tus = request.headers().contains_key(TUS_RESUMABLE);
    let mut method = request.method().clone();
    // tus asks servers to honour a method override, for clients behind proxies that only pass
    // GET and POST.
    if is_tus
        && let Some(value) = request.headers().get(METHOD_OVERRIDE)
        && let Ok(overridden) = Method::from_bytes(value.as_bytes())
    {
        method = overridden;
    }
    if method == Method::OPTIONS {
        return capabilities(&tus);
    }
    if !is_tus && (method == Method::GET || method == Method::HEAD) {
        let headers = request.headers().clone();
        return super::download::download(
            State(tus.files.clone()),
            Path(id),
            RawQuery(query),
            method,
            headers,
        )
        .await;
    }
    let identity = match tus.admit(request.headers()) {
        Ok(identity) => identity,
        Err(refused) => return refused.into_response(),
    };
    // A malformed id names no upload.
    let Ok(id) = Uuid::parse_str(&id) else {
        return answer(StatusCode::NOT_FOUND, &format!("no upload {id}"));
    };
    match method {
        Method::HEAD => head(&tus, id, identity).await,
        Method::PATCH => patch(&tus, id, identity, request).await,
        Method::DELETE => match tus.files.tus_terminate(&id, identity.as_ref()).await {
            Ok(()) => answer(StatusCode::NO_CONTENT, ""),
            Err(error) => failure(error),
        },
        _ => {
            let mut response = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                "a tus upload answers HEAD, PATCH, DELETE and OPTIONS",
            );
            set(&mut response, header::ALLOW, "HEAD, PATCH, DELETE, OPTIONS");
            response
        }
    }
}

/// HEAD: the durable offset, length, metadata and expiry, never cached.
async fn head(tus: &Tus, id: Uuid, identity: Option<Identity>) -> Response {
    let mut response = match tus.files.tus_info(&id, identity.as_ref()).await {
        Ok(upload) => {
            let mut response = answer(StatusCode::OK, "");
            describe(&mut response, &upload);
            if !upload.metadata.is_empty() {
                set(&mut response, UPLOAD_METADATA, &upload.metadata);
            }
            response
        }
        Err(error) => failure(error),
    };
    set(&mut response, header::CACHE_CONTROL, "no-store");
    response
}

/// PATCH: the body at `Upload-Offset`; 204 with the new offset and expiry.
async fn patch(tus: &Tus, id: Uuid, identity: Option<Identity>, request: Request) -> Response {
    let headers = request.headers();
    if !is_offset_stream(headers) {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a PATCH body must be Content-Type: application/offset+octet-stream",
        );
    }
    let offset = match number(headers, &UPLOAD_OFFSET) {
        Ok(Some(offset)) => offset,
        Ok(None) => return answer(StatusCode::BAD_REQUEST, "Upload-Offset is required"),
        Err(refused) => return refused.into_response(),
    };
    let chunk = match body_chunk(headers, offset) {
        Ok(chunk) => chunk,
        Err(refused) => return refused.into_response(),
    };
    let body: Body = request.into_body();
    match tus
        .files
        .tus_patch(id, identity, chunk, body.into_data_stream())
        .await
    {
        Ok(upload) => {
            let mut response = answer(StatusCode::NO_CONTENT, "");
            set(&mut response, UPLOAD_OFFSET, upload.offset);
            if let Some(expires) = upload.expires_at_micros {
                let at = UNIX_EPOCH + Duration::from_micros(expires.max(0) as u64);
                set(&mut response, UPLOAD_EXPIRES, httpdate::fmt_http_date(at));
            }
            response
        }
        Err(error) => failure(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn status(result: Result<impl std::fmt::Debug, Refusal>) -> u16 {
        match result {
            Ok(_) => 0,
            Err(refusal) => refusal.status.as_u16(),
        }
    }

    #[test]
    fn metadata_reads_the_known_keys_and_keeps_the_header() {
        let mut create = TusCreate::default();
        // "a.txt", "text/plain"; `empty` has no value, `other` is kept but not read.
        let sent = "filename YS50eHQ=,filetype dGV4dC9wbGFpbg, empty,other eA==";
        metadata(&headers(&[("upload-metadata", sent)]), &mut create).unwrap();
        assert_eq!(create.filename, "a.txt");
        assert_eq!(create.filetype, "text/plain");
        assert_eq!(create.checksum, "");
        assert_eq!(create.metadata, sent);
    }

    #[test]
    fn metadata_refuses_what_tus_forbids() {
        for bad in [
            "filename YQ==,filename Yg==", // duplicate key
            "filename !!!",                // not base64
            "filename /w==",               // not UTF-8 (0xff)
        ] {
            let mut create = TusCreate::default();
            let answer = metadata(&headers(&[("upload-metadata", bad)]), &mut create);
            assert_eq!(status(answer), 400, "{bad:?}");
        }
        let long = format!("other {}", "A".repeat(MAX_METADATA_BYTES));
        let mut create = TusCreate::default();
        assert_eq!(
            status(metadata(
                &headers(&[("upload-metadata", &long)]),
                &mut create
            )),
            400
        );
    }

    #[test]
    fn checksum_headers_name_sha1_or_sha256() {
        // sha1("") and sha256("") in base64.
        let sha1 = "2jmj7l5rSw0yVb/vlWAYkK/YBwk=";
        let sha256 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let ok = chunk_checksum(&headers(&[("upload-checksum", &format!("sha1 {sha1}"))]));
        assert_eq!(ok.unwrap().unwrap().0, ChunkAlgorithm::Sha1);
        let ok = chunk_checksum(&headers(&[(
            "upload-checksum",
            &format!("sha256 {sha256}"),
        )]));
        assert_eq!(ok.unwrap().unwrap().0, ChunkAlgorithm::Sha256);
        assert!(chunk_checksum(&headers(&[])).unwrap().is_none());
        for bad in [
            format!("md5 {sha1}"),
            format!("sha1 {sha256}"), // a digest of the wrong length
            "sha1".to_string(),
            "sha256 not-base64!".to_string(),
        ] {
            let answer = chunk_checksum(&headers(&[("upload-checksum", &bad)]));
            assert_eq!(status(answer), 400, "{bad:?}");
        }
    }

    #[test]
    fn numbers_are_plain_non_negative_integers() {
        let read = |v: &str| number(&headers(&[("upload-offset", v)]), &UPLOAD_OFFSET);
        assert_eq!(read("0").unwrap(), Some(0));
        assert_eq!(read(" 42 ").unwrap(), Some(42));
        for bad in ["-1", "1.5", "", "0x10", "+3"] {
            assert_eq!(status(read(bad)), 400, "{bad:?}");
        }
        assert_eq!(status(read("99999999999999999999999")), 413);
        assert_eq!(number(&headers(&[]), &UPLOAD_OFFSET).unwrap(), None);
    }

    #[test]
    fn only_tus_1_0_0_is_admitted() {
        assert!(check_version(&headers(&[("tus-resumable", "1.0.0")])).is_ok());
        for other in [&[("tus-resumable", "0.2.2")][..], &[][..]] {
            let refused = check_version(&headers(other)).unwrap_err().into_response();
            assert_eq!(refused.status(), StatusCode::PRECONDITION_FAILED);
            assert_eq!(refused.headers()[TUS_VERSION_HEADER], "1.0.0");
            assert_eq!(refused.headers()[TUS_RESUMABLE], "1.0.0");
        }
    }
}
