//! `streamhub upload`, `streamhub download` and `streamhub files …`: move files to and from a
//! server with UploadFile and DownloadFile, and look them up with GetFileInfo and
//! GetUploadStatus.
//!
//! File bytes always stream: an upload reads the file in 64 KiB chunks through a small bounded
//! channel, and a download writes chunks to `PATH.part` as they arrive. Neither ever holds the
//! whole file in memory. Both check the SHA-256 end to end: an upload sends the file's checksum
//! for the server to verify, and a download verifies the bytes it wrote against the server's
//! checksum before renaming `PATH.part` to `PATH`.
//!
//! Results go to stdout; progress bars, notes and hints go to stderr.

use super::format::{hex_digest, thousands};
use super::{CliError, CliResult, Connect, fail};
use crate::proto::{
    DownloadFileRequest, FileChunk, FileMetadata, GetFileInfoRequest, GetUploadStatusRequest,
    GetUploadStatusResponse, UploadFileResponse, file_chunk,
};
use clap::{Args, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tonic::{Code, Status};

/// Bytes per upload chunk message; the server sends download chunks of at most the same size.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Chunks in flight between the file reader (or writer) thread and the gRPC call: bounds the
/// client's memory to about this many chunks.
const CHANNEL_CHUNKS: usize = 32;

/// Buffer for hashing a file before an upload or the existing part of a resumed download.
const HASH_BUFFER: usize = 1024 * 1024;

/// `streamhub upload FILE …`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// A file id of your choosing (a UUID), or `auto` for a fresh one (printed). It makes the
    /// upload resumable: if it is interrupted, the server keeps the bytes it received, and the
    /// same command with --resume sends the rest.
    #[arg(long, value_name = "UUID|auto", value_parser = parse_upload_id)]
    pub id: Option<UploadId>,
    /// Continue an interrupted upload with the same --id: ask the server how many bytes it
    /// already has and send only the rest. Starts from the beginning if it has none.
    #[arg(long, requires = "id")]
    pub resume: bool,
    /// MIME type to record; by default guessed from the extension (application/octet-stream
    /// when unknown).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// File name to record on the server; by default FILE's base name.
    #[arg(long)]
    pub name: Option<String>,
    /// Hide the progress bars and notes (the hint about --id too).
    #[arg(long)]
    pub quiet: bool,
    /// Print the server's answer as proto3 JSON (an UploadFileResponse).
    #[arg(long)]
    pub json: bool,
}

/// What `upload --id` was given.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadId {
    /// A UUID, hyphenated and lowercase.
    Given(String),
    /// `auto`: make a fresh UUID.
    Auto,
}

fn parse_upload_id(text: &str) -> Result<UploadId, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(UploadId::Auto);
    }
    parse_file_id(text)
        .map(UploadId::Given)
        .map_err(|e| format!("{e} (or `auto` for a fresh one)"))
}

/// `streamhub download ID …`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The id of the file on the server.
    #[arg(value_parser = parse_file_id)]
    pub id: String,
    /// Where to save the file: a path, or an existing directory to save into. By default the
    /// file's name on the server, in the current directory (its id when the name is not safe to
    /// use as a path).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Continue an interrupted download: keep the bytes already in PATH.part and fetch the rest.
    #[arg(long)]
    pub resume: bool,
    /// Replace PATH if it already exists.
    #[arg(long)]
    pub force: bool,
    /// Hide the progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the downloaded file's metadata as proto3 JSON (a FileMetadata) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `streamhub files …`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    #[command(subcommand)]
    pub command: FilesCommand,
}

/// Look-ups that move no file bytes.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Print a stored file's metadata: id, name, size, type, SHA-256 and creation time.
    Info {
        /// The id of the file on the server.
        #[arg(value_parser = parse_file_id)]
        id: String,
        /// Print it as proto3 JSON (a FileMetadata).
        #[arg(long)]
        json: bool,
    },
    /// Print how many bytes of an upload the server has, and whether it is complete.
    Status {
        /// The id the upload was started with (`upload --id`).
        #[arg(value_parser = parse_file_id)]
        id: String,
        /// Print it as proto3 JSON (a GetUploadStatusResponse).
        #[arg(long)]
        json: bool,
    },
}

/// Accepts a UUID in any form `uuid` parses and returns it hyphenated and lowercase.
fn parse_file_id(text: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(text.trim())
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| format!("{text:?} is not a file id; file ids are UUIDs"))
}

/// A MIME type for a few common extensions; application/octet-stream otherwise.
pub fn guess_content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

/// The server's file name when it is safe to create in a directory as is; `None` when it is
/// empty, too long, hidden, `.`/`..`, or carries a path separator or a control character.
pub fn safe_file_name(name: &str) -> Option<&str> {
    let unsafe_name = name.is_empty()
        || name.len() > 255
        || name.starts_with('.')
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control);
    (!unsafe_name).then_some(name)
}

/// "1,234,567 bytes (1.18 MiB)".
fn describe_size(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else {
        format!("{} bytes ({})", thousands(bytes), HumanBytes(bytes))
    }
}

/// A byte progress bar on stderr (hidden when `quiet` or when stderr is not a terminal).
pub fn byte_bar(total: u64, label: &str, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>11} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_string());
    bar
}

/// A failed RPC as a message for the terminal: what failed, the status code and the server's
/// message, and a hint where one helps.
fn rpc_error(action: &str, status: &Status) -> CliError {
    let hint = match status.code() {
        Code::Unimplemented => " (this server does not serve files yet)",
        Code::Unavailable => " (is the server running and reachable?)",
        _ => "",
    };
    fail(format!(
        "{action} failed: {:?}: {}{hint}",
        status.code(),
        status.message()
    ))
}

use super::Client;

/// Dispatches `streamhub files …`.
pub async fn run_files(connect: &Connect, args: FilesArgs) -> CliResult<()> {
    match args.command {
        FilesCommand::Info { id, json } => {
            let mut client = connect.client().await?;
            let info = client
                .get_file_info(GetFileInfoRequest {
                    file_id: id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&format!("file info for {id}"), &s))?
                .into_inner();
            if json {
                return super::json::print(&info);
            }
            print_info(&info);
            Ok(())
        }
        FilesCommand::Status { id, json } => {
            let mut client = connect.client().await?;
            let status = client
                .get_upload_status(GetUploadStatusRequest {
                    file_id: id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&format!("upload status for {id}"), &s))?
                .into_inner();
            if json {
                return super::json::print(&status);
            }
            print_status(&status);
            Ok(())
        }
    }
}

fn print_info(info: &FileMetadata) {
    println!("id       {}", info.file_id);
    println!("name     {}", info.filename);
    println!(
        "size     {}",
        describe_size(u64::try_from(info.total_size).unwrap_or(0))
    );
    println!("type     {}", info.content_type);
    println!("sha256   {}", info.checksum);
    println!(
        "created  {}",
        info.created_at
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into())
    );
}

fn print_status(status: &GetUploadStatusResponse) {
    let percent = if status.total_size > 0 {
        format!(
            " ({:.1}%)",
            status.bytes_received as f64 * 100.0 / status.total_size as f64
        )
    } else {
        String::new()
    };
    println!("id        {}", status.file_id);
    println!(
        "received  {} of {} bytes{percent}",
        thousands(u64::try_from(status.bytes_received).unwrap_or(0)),
        thousands(u64::try_from(status.total_size).unwrap_or(0)),
    );
    println!("complete  {}", if status.complete { "yes" } else { "no" });
}

// ------------------------------------------------------------------------------------ upload

/// `streamhub upload`: hash the file, then stream it with UploadFile, from the server's
/// resume point when `--resume` is given.
pub async fn upload(connect: &Connect, args: UploadArgs) -> CliResult<()> {
    let path = args.file.clone();
    let id = match &args.id {
        None => None,
        Some(UploadId::Given(id)) => Some(id.clone()),
        Some(UploadId::Auto) if args.resume => {
            return Err(fail(
                "--resume needs the id of the interrupted upload, not --id auto",
            ));
        }
        Some(UploadId::Auto) => {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            eprintln!("upload id {id}");
            Some(id)
        }
    };
    let meta = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!("file not found: {}", path.display())));
        }
        Err(e) => return Err(fail(format!("cannot read {}: {e}", path.display()))),
    };
    if !meta.is_file() {
        return Err(fail(format!("{} is not a regular file", path.display())));
    }
    let total = meta.len();
    let total_i64 = i64::try_from(total)
        .map_err(|_| fail(format!("{} is too large to upload", path.display())))?;
    let filename = match &args.name {
        Some(name) => name.clone(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| fail(format!("{} has no file name; pass --name", path.display())))?,
    };
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| guess_content_type(&path).to_string());

    let mut client = connect.client().await?;

    // Where to start: the server's count of received bytes for a resumed upload, else 0.
    let offset = match &id {
        Some(id) => match start_point(&mut client, id, args.resume, total, &path).await? {
            Some(offset) => offset,
            None => {
                println!("upload {id} is already complete ({})", describe_size(total));
                return Ok(());
            }
        },
        None => {
            if !args.quiet {
                eprintln!("hint: pass --id auto (or --id UUID) to make an upload resumable");
            }
            0
        }
    };

    // The checksum first: the server verifies it before it commits the file.
    let checksum = hash_file(&path, total, args.quiet).await?;

    let metadata = FileMetadata {
        filename,
        total_size: total_i64,
        content_type,
        checksum: checksum.clone(),
        file_id: id.clone().unwrap_or_default(),
        created_at: None,
        download_url: String::new(),
    };
    let bar = byte_bar(total, "uploading", args.quiet);
    bar.set_position(offset);
    bar.reset_eta();

    let outcome = tokio::select! {
        outcome = send_file(&mut client, &path, metadata, offset, total, args.resume, bar.clone()) => outcome,
        _ = tokio::signal::ctrl_c() => Err(Unsent { error: fail("interrupted"), kept: true }),
    };
    bar.finish_and_clear();
    let response = match outcome {
        Ok(response) => response,
        Err(Unsent { error, kept }) => {
            let advice = match &id {
                Some(id) if kept => advice_after(&mut client, id, &path).await,
                _ => String::new(),
            };
            return Err(fail(format!("{error}{advice}")));
        }
    };
    if args.json {
        return super::json::print(&response);
    }
    print_upload(&response, &checksum, total - offset);
    Ok(())
}

/// What to do after an interrupted resumable upload, from what the server really holds
/// (GetUploadStatus), not from what this side sent.
async fn advice_after(client: &mut Client, id: &str, path: &Path) -> String {
    let resume = format!("streamhub upload {} --id {id} --resume", path.display());
    let asked = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_upload_status(GetUploadStatusRequest {
            file_id: id.to_string(),
        }),
    )
    .await;
    match asked {
        Ok(Ok(status)) => {
            let status = status.into_inner();
            let received = u64::try_from(status.bytes_received).unwrap_or(0);
            if status.complete {
                format!("\nthe server has the complete file {id}: there is nothing to resume")
            } else if received > 0 {
                format!(
                    "\nthe server holds {} of {} bytes of upload {id}: run `{resume}` to send \
                     the rest",
                    thousands(received),
                    thousands(u64::try_from(status.total_size).unwrap_or(0))
                )
            } else {
                format!(
                    "\nthe server holds no bytes of upload {id}: run the same command again to \
                     start over"
                )
            }
        }
        Ok(Err(status)) if status.code() == Code::NotFound => format!(
            "\nthe server kept nothing of upload {id}: run the same command again to start over"
        ),
        Ok(Err(status)) => format!(
            "\ncould not ask the server what it kept ({:?}: {}); when it is back, `{resume}` \
             continues from what it holds",
            status.code(),
            status.message()
        ),
        Err(_) => format!(
            "\nthe server did not say what it kept within 5 s; `{resume}` continues from what \
             it holds"
        ),
    }
}

/// Asks the server about upload `id` before sending: returns the offset to send from, or
/// `None` when `resume` finds the upload already complete. Without `resume`, an upload the
/// server already holds bytes of is refused rather than started over.
async fn start_point(
    client: &mut Client,
    id: &str,
    resume: bool,
    total: u64,
    path: &Path,
) -> CliResult<Option<u64>> {
    let status = match client
        .get_upload_status(GetUploadStatusRequest {
            file_id: id.to_string(),
        })
        .await
    {
        Ok(status) => status.into_inner(),
        Err(status) if status.code() == Code::NotFound => {
            if resume {
                eprintln!("the server has no bytes of upload {id}; starting from the beginning");
            }
            return Ok(Some(0));
        }
        Err(status) => return Err(rpc_error(&format!("upload status for {id}"), &status)),
    };
    let received = u64::try_from(status.bytes_received).unwrap_or(0);
    if !resume {
        if status.complete {
            return Err(fail(format!(
                "a complete file already has id {id}; choose another --id"
            )));
        }
        if received > 0 {
            return Err(fail(format!(
                "the server already has {} of {} bytes of upload {id}; add --resume to continue \
                 it, or choose another --id",
                thousands(received),
                thousands(u64::try_from(status.total_size).unwrap_or(0))
            )));
        }
        return Ok(Some(0));
    }
    if u64::try_from(status.total_size).ok() != Some(total) {
        return Err(fail(format!(
            "upload {id} on the server is for {} bytes, but {} has {total}; is it the same file?",
            status.total_size,
            path.display(),
        )));
    }
    if status.complete {
        return Ok(None);
    }
    let offset = received.min(total);
    eprintln!(
        "resuming upload {id}: the server has {} of {} bytes",
        thousands(offset),
        thousands(total)
    );
    Ok(Some(offset))
}

/// A failed upload call.
struct Unsent {
    error: CliError,
    /// The call broke off rather than being refused, so a resumable upload's bytes are kept
    /// on the server and `--resume` can continue it.
    kept: bool,
}

impl Unsent {
    fn broken_off(error: CliError) -> Self {
        Unsent { error, kept: true }
    }
}

fn print_upload(response: &UploadFileResponse, checksum: &str, sent: u64) {
    println!("file_id       {}", response.file_id);
    println!(
        "bytes         {}{}",
        describe_size(u64::try_from(response.bytes_uploaded).unwrap_or(0)),
        if sent as i64 != response.bytes_uploaded {
            format!(", {} sent by this call", thousands(sent))
        } else {
            String::new()
        }
    );
    println!(
        "sha256        {checksum} ({})",
        if response.checksum_verified {
            "verified by the server"
        } else {
            "NOT verified by the server"
        }
    );
    println!("download_url  {}", response.download_url);
}

/// Reads `total` bytes of `path` through SHA-256, with a progress bar.
async fn hash_file(path: &Path, total: u64, quiet: bool) -> CliResult<String> {
    let bar = byte_bar(total, "sha256", quiet);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let (hasher, read) = hash_reader(file.take(total), &bar)
        .await
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    bar.finish_and_clear();
    if read != total {
        return Err(fail(format!(
            "{} changed while it was being read: {read} bytes instead of {total}",
            path.display()
        )));
    }
    Ok(hex_digest(hasher))
}

/// Feeds everything `reader` yields into a new SHA-256; returns it and the byte count.
async fn hash_reader(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    bar: &ProgressBar,
) -> std::io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER];
    let mut count = 0u64;
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Ok((hasher, count));
        }
        hasher.update(&buffer[..n]);
        count += n as u64;
        bar.inc(n as u64);
    }
}

/// Streams the metadata, then the bytes of `path` from `offset` to `total`, and returns the
/// server's answer. A thread reads the file into a bounded channel; if reading fails, the call
/// is cancelled (not half-closed), so the server never mistakes a short read for the end.
async fn send_file(
    client: &mut Client,
    path: &Path,
    metadata: FileMetadata,
    offset: u64,
    total: u64,
    resuming: bool,
    bar: ProgressBar,
) -> Result<UploadFileResponse, Unsent> {
    let (tx, rx) = tokio::sync::mpsc::channel::<FileChunk>(CHANNEL_CHUNKS);
    let reader_path = path.to_path_buf();
    let reader_bar = bar.clone();
    let mut reader = tokio::task::spawn_blocking(move || -> CliResult<()> {
        let first = FileChunk {
            data: Some(file_chunk::Data::Metadata(metadata)),
            offset: 0,
        };
        if tx.blocking_send(first).is_err() {
            return Ok(()); // The call already ended; its outcome is the error to report.
        }
        read_chunks(&reader_path, offset, total, |chunk| {
            tx.blocking_send(chunk).is_ok()
        })?;
        reader_bar.set_message("verifying");
        Ok(())
    });

    let progress = bar.clone();
    let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |chunk| {
        if let Some(file_chunk::Data::Chunk(bytes)) = &chunk.data {
            progress.inc(bytes.len() as u64);
        }
        chunk
    });
    let call = client.upload_file(chunks);
    tokio::pin!(call);
    let mut reader_done = false;
    let response = loop {
        tokio::select! {
            response = &mut call => break response,
            joined = &mut reader, if !reader_done => match joined {
                Ok(Ok(())) => reader_done = true,
                // Dropping `call` on return cancels the RPC.
                Ok(Err(err)) => return Err(Unsent::broken_off(err)),
                Err(e) => return Err(Unsent::broken_off(fail(format!("file reader failed: {e}")))),
            },
        }
    };
    match response {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            // A reader error that raced the call's failure explains it better.
            if !reader_done
                && let Ok(Ok(Err(err))) =
                    tokio::time::timeout(std::time::Duration::from_millis(100), &mut reader).await
            {
                return Err(Unsent::broken_off(err));
            }
            let kept = matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::Internal
            );
            Err(Unsent {
                error: upload_error(&status, resuming),
                kept,
            })
        }
    }
}

/// Reads `path` from `offset` up to `total` in chunks of [`CHUNK_SIZE`], each carrying its
/// offset, and hands each to `send` until it returns false.
fn read_chunks(
    path: &Path,
    offset: u64,
    total: u64,
    mut send: impl FnMut(FileChunk) -> bool,
) -> CliResult<()> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| fail(format!("cannot seek in {}: {e}", path.display())))?;
    let mut position = offset;
    while position < total {
        let want = (total - position).min(CHUNK_SIZE as u64) as usize;
        let mut buffer = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buffer[filled..]) {
                Ok(0) => {
                    return Err(fail(format!(
                        "{} got shorter while it was being uploaded ({} of {total} bytes)",
                        path.display(),
                        position + filled as u64
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(format!("cannot read {}: {e}", path.display()))),
            }
        }
        let chunk = FileChunk {
            data: Some(file_chunk::Data::Chunk(buffer)),
            offset: position as i64,
        };
        if !send(chunk) {
            return Ok(());
        }
        position += want as u64;
    }
    Ok(())
}

/// An UploadFile failure with a hint for the codes a person can act on.
fn upload_error(status: &Status, resuming: bool) -> CliError {
    let hint = match status.code() {
        Code::FailedPrecondition if resuming => {
            " (the interrupted upload was started with other metadata: the same file, --name \
             and --content-type are needed to resume it)"
        }
        Code::FailedPrecondition => {
            " (the server already has part of this upload; add --resume to continue it)"
        }
        Code::AlreadyExists => " (a complete file already has this id)",
        Code::Aborted => {
            " (wait for the other upload to end; if it was interrupted, --resume continues it)"
        }
        Code::DataLoss => {
            " (the bytes the server received do not match the SHA-256; did the file change \
             during the upload?)"
        }
        Code::ResourceExhausted => {
            " (the file is over the server's size limit, or its disk is full)"
        }
        _ => return rpc_error("upload", status),
    };
    fail(format!(
        "upload failed: {:?}: {}{hint}",
        status.code(),
        status.message()
    ))
}

// ---------------------------------------------------------------------------------- download

/// `streamhub download`: GetFileInfo to name the output, then DownloadFile into `PATH.part`,
/// verified against the server's SHA-256, fsynced and renamed to `PATH`.
pub async fn download(connect: &Connect, args: DownloadArgs) -> CliResult<()> {
    let id = args.id.clone();
    let mut client = connect.client().await?;
    let info = client
        .get_file_info(GetFileInfoRequest {
            file_id: id.clone(),
        })
        .await
        .map_err(|s| rpc_error(&format!("download of {id}"), &s))?
        .into_inner();
    let total = u64::try_from(info.total_size)
        .map_err(|_| fail(format!("the server reports a negative size for {id}")))?;

    let default_name = match safe_file_name(&info.filename) {
        Some(name) => name.to_string(),
        None => {
            if args.output.as_ref().is_none_or(|out| out.is_dir()) {
                eprintln!(
                    "note: the file's name {:?} is not safe to use as a path; saving it as {id}",
                    info.filename
                );
            }
            id.clone()
        }
    };
    let path = match &args.output {
        Some(out) if out.is_dir() => out.join(&default_name),
        Some(out) => out.clone(),
        None => PathBuf::from(&default_name),
    };
    if path.exists() && !args.force {
        return Err(fail(format!(
            "{} already exists; pass --force to replace it or -o to save elsewhere",
            path.display()
        )));
    }
    let part = part_path(&path);

    // What is already on disk from an earlier attempt.
    let existing = match tokio::fs::metadata(&part).await {
        Ok(meta) if meta.is_file() => Some(meta.len()),
        Ok(_) => {
            return Err(fail(format!("{} exists and is not a file", part.display())));
        }
        Err(_) => None,
    };
    let (hasher, offset) = match (args.resume, existing) {
        (true, Some(len)) if len > total => {
            return Err(fail(format!(
                "{} has {len} bytes but the file has {total}; it is not part of this file — \
                 delete it or download without --resume",
                part.display()
            )));
        }
        (true, Some(len)) => {
            eprintln!(
                "resuming: {} has {} of {} bytes",
                part.display(),
                thousands(len),
                thousands(total)
            );
            let bar = byte_bar(len, "checking", args.quiet);
            let file = tokio::fs::File::open(&part)
                .await
                .map_err(|e| fail(format!("cannot open {}: {e}", part.display())))?;
            let (hasher, read) = hash_reader(file.take(len), &bar)
                .await
                .map_err(|e| fail(format!("cannot read {}: {e}", part.display())))?;
            bar.finish_and_clear();
            if read != len {
                return Err(fail(format!(
                    "{} changed while it was being read",
                    part.display()
                )));
            }
            (hasher, len)
        }
        (true, None) => {
            eprintln!(
                "no partial download at {}; starting from the beginning",
                part.display()
            );
            (Sha256::new(), 0)
        }
        (false, Some(_)) => {
            eprintln!(
                "note: replacing the partial download at {} (--resume continues one)",
                part.display()
            );
            (Sha256::new(), 0)
        }
        (false, None) => (Sha256::new(), 0),
    };

    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(offset > 0)
        .truncate(offset == 0)
        .open(&part)
        .map_err(|e| fail(format!("cannot write {}: {e}", part.display())))?;

    let bar = byte_bar(total, "downloading", args.quiet);
    bar.set_position(offset);
    bar.reset_eta();
    let outcome = tokio::select! {
        outcome = receive_file(&mut client, &id, offset, file, hasher, (&path, &part), &bar) => outcome,
        _ = tokio::signal::ctrl_c() => Err(fail("interrupted")),
    };
    bar.finish_and_clear();
    let (metadata, digest) = match outcome {
        Ok(done) => done,
        Err(err) => {
            return Err(fail(format!(
                "{err}\n{} keeps the bytes received so far: run the same command with --resume \
                 to continue",
                part.display()
            )));
        }
    };

    if metadata.checksum.is_empty() {
        eprintln!("warning: the server has no SHA-256 for {id}; the download is not verified");
    } else if !metadata.checksum.eq_ignore_ascii_case(&digest) {
        let _ = std::fs::remove_file(&part);
        return Err(fail(format!(
            "checksum mismatch: the server's SHA-256 is {} but the downloaded bytes hash to \
             {digest}; removed {}{}",
            metadata.checksum,
            part.display(),
            if offset > 0 {
                " (its earlier part may not have belonged to this file)"
            } else {
                ""
            }
        )));
    }
    std::fs::rename(&part, &path).map_err(|e| {
        fail(format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            path.display()
        ))
    })?;
    sync_parent_dir(&path);
    if args.json {
        eprintln!("saved {}", path.display());
        return super::json::print(&metadata);
    }
    println!("saved    {}", path.display());
    println!("id       {}", metadata.file_id);
    println!("size     {}", describe_size(total));
    println!(
        "sha256   {digest}{}",
        if metadata.checksum.is_empty() {
            " (not verified)"
        } else {
            " (verified)"
        }
    );
    Ok(())
}

/// `PATH.part`.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Makes a rename durable: fsyncs the directory that holds `path`. Best effort.
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
}

/// Runs DownloadFile from `offset`, appending to `file` on a writer thread that hashes as it
/// writes, flushes and fsyncs. Returns the stream's metadata and the SHA-256 of the whole file
/// (the earlier part included, through `hasher`).
async fn receive_file(
    client: &mut Client,
    id: &str,
    offset: u64,
    file: std::fs::File,
    hasher: Sha256,
    (path, part): (&Path, &Path),
    bar: &ProgressBar,
) -> CliResult<(FileMetadata, String)> {
    let mut stream = client
        .download_file(DownloadFileRequest {
            file_id: id.to_string(),
            offset: offset as i64,
        })
        .await
        .map_err(|s| download_error(&s))?
        .into_inner();
    let metadata = match stream.message().await.map_err(|s| download_error(&s))? {
        Some(FileChunk {
            data: Some(file_chunk::Data::Metadata(metadata)),
            ..
        }) => metadata,
        Some(_) => {
            return Err(fail(
                "the server sent file bytes before the file's metadata",
            ));
        }
        None => {
            return Err(fail(
                "the server ended the download before sending anything",
            ));
        }
    };
    let total = u64::try_from(metadata.total_size)
        .map_err(|_| fail(format!("the server reports a negative size for {id}")))?;
    bar.set_length(total);
    eprintln!(
        "{}, {} → {}",
        if metadata.filename.is_empty() {
            id
        } else {
            &metadata.filename
        },
        describe_size(total),
        path.display(),
    );

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CHANNEL_CHUNKS);
    let part_name = part.display().to_string();
    let writer = tokio::task::spawn_blocking(move || -> CliResult<String> {
        let mut hasher = hasher;
        let mut out = std::io::BufWriter::with_capacity(1024 * 1024, file);
        let io = |e: std::io::Error| fail(format!("cannot write {part_name}: {e}"));
        while let Some(bytes) = rx.blocking_recv() {
            hasher.update(&bytes);
            out.write_all(&bytes).map_err(io)?;
        }
        out.flush().map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(hex_digest(hasher))
    });

    // Receive until the end, an error, or the writer failing (its error is the one to report).
    let received = async {
        let mut expected = offset;
        while let Some(message) = stream.message().await.map_err(|s| download_error(&s))? {
            let bytes = match message.data {
                Some(file_chunk::Data::Chunk(bytes)) => bytes,
                Some(file_chunk::Data::Metadata(_)) => {
                    return Err(fail("the server sent a second metadata message"));
                }
                None => continue,
            };
            if message.offset != expected as i64 {
                return Err(fail(format!(
                    "the server sent bytes at offset {} where {expected} was expected",
                    message.offset
                )));
            }
            expected += bytes.len() as u64;
            if expected > total {
                return Err(fail(format!(
                    "the server sent more than the file's {total} bytes"
                )));
            }
            let len = bytes.len() as u64;
            if tx.send(bytes).await.is_err() {
                return Ok(expected); // The writer stopped; its error follows.
            }
            bar.inc(len);
        }
        if expected != total {
            return Err(fail(format!(
                "the download ended after {expected} of {total} bytes"
            )));
        }
        Ok(expected)
    }
    .await;
    drop(tx);
    bar.set_message("syncing");
    let written = writer
        .await
        .map_err(|e| fail(format!("file writer failed: {e}")))?;
    received?;
    Ok((metadata, written?))
}

/// A DownloadFile failure with a hint for the codes a person can act on.
fn download_error(status: &Status) -> CliError {
    match status.code() {
        Code::OutOfRange => fail(format!(
            "download failed: OutOfRange: {} (the partial download does not fit this file; \
             delete the .part file or download without --resume)",
            status.message()
        )),
        Code::NotFound => fail(format!(
            "download failed: NotFound: {} (no complete file with this id)",
            status.message()
        )),
        _ => rpc_error("download", status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        assert_eq!(safe_file_name("report.pdf"), Some("report.pdf"));
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            ".bashrc",
            "a\nb",
        ] {
            assert_eq!(safe_file_name(bad), None, "{bad:?}");
        }
        assert_eq!(safe_file_name(&"x".repeat(300)), None);
    }

    #[test]
    fn content_types_are_guessed_from_extensions() {
        assert_eq!(guess_content_type(Path::new("a/b.PNG")), "image/png");
        assert_eq!(guess_content_type(Path::new("notes.txt")), "text/plain");
        assert_eq!(
            guess_content_type(Path::new("blob")),
            "application/octet-stream"
        );
    }

    #[test]
    fn file_ids_must_be_uuids() {
        assert!(parse_file_id("not-a-uuid").is_err());
        assert_eq!(
            parse_file_id("67E55044-10B1-426F-9247-BB680E5FE0C8"),
            Ok("67e55044-10b1-426f-9247-bb680e5fe0c8".to_string())
        );
    }

    #[test]
    fn chunks_carry_their_offsets_and_stop_at_total() {
        let dir = std::env::temp_dir().join(format!("streamhub-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data");
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 10)).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut seen = Vec::new();
        read_chunks(&path, 100, data.len() as u64, |chunk| {
            let Some(file_chunk::Data::Chunk(bytes)) = chunk.data else {
                panic!("not a chunk")
            };
            seen.push((chunk.offset, bytes));
            true
        })
        .unwrap();
        let offsets: Vec<i64> = seen.iter().map(|(o, _)| *o).collect();
        // 2 × 64 KiB + 10 bytes from offset 100: one full chunk, then the 64 KiB − 90 left.
        assert_eq!(offsets, vec![100, 100 + CHUNK_SIZE as i64]);
        assert_eq!(seen[1].1.len(), CHUNK_SIZE - 90);
        let joined: Vec<u8> = seen.into_iter().flat_map(|(_, b)| b).collect();
        assert_eq!(joined, data[100..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
