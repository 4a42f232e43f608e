//! ListFiles against the real server, on both stores: the caller's own complete files, newest
//! first, each as GetFileInfo describes it (with a working download URL); services see every
//! file; incomplete uploads never appear; pages of a fixed size cover the list exactly once,
//! also while new files arrive; `limit` 0 means 100 and more than 1,000 means 1,000; and bad
//! page tokens, and callers without a token, are refused.

mod common;

use common::{AuthClient, StoreKind, TestServer, store_tests, within};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use streamhub::auth::{Role, mint_hs256};
use streamhub::proto::file_chunk::Data;
use streamhub::proto::*;
use tonic::Code;

const SECRET: &str = "an hs256 secret of at least 32 bytes, for tests";

fn token(sub: &str, role: Role) -> String {
    mint_hs256(SECRET.as_bytes(), sub, role, Duration::from_secs(600), None).unwrap()
}

async fn as_user(addr: SocketAddr, sub: &str) -> AuthClient {
    common::client_as(addr, &token(sub, Role::User)).await
}

async fn as_service(addr: SocketAddr) -> AuthClient {
    common::client_as(addr, &token("backend", Role::Service)).await
}

async fn auth_server(kind: StoreKind) -> TestServer {
    TestServer::start_on(kind, |c| {
        c.auth = true;
        c.auth_hs256_secret = Some(SECRET.to_string().into());
    })
    .await
}

fn meta(name: &str, size: usize, file_id: &str) -> FileChunk {
    FileChunk {
        offset: 0,
        data: Some(Data::Metadata(FileMetadata {
            filename: name.into(),
            total_size: size as i64,
            content_type: "text/plain".into(),
            file_id: file_id.into(),
            ..Default::default()
        })),
    }
}

/// A complete upload of `bytes` named `name`: its id.
async fn upload(client: &mut AuthClient, name: &str, bytes: &[u8]) -> String {
    let chunks = vec![
        meta(name, bytes.len(), ""),
        FileChunk {
            offset: 0,
            data: Some(Data::Chunk(bytes.to_vec())),
        },
    ];
    client
        .upload_file(tokio_stream::iter(chunks))
        .await
        .expect("upload")
        .into_inner()
        .file_id
}

async fn list(
    client: &mut AuthClient,
    page_token: &str,
    limit: u32,
) -> Result<ListFilesResponse, tonic::Status> {
    client
        .list_files(ListFilesRequest {
            page_token: page_token.into(),
            limit,
        })
        .await
        .map(|r| r.into_inner())
}

/// Every page of a listing of `limit` files each, and the ids in order.
async fn all_pages(client: &mut AuthClient, limit: u32) -> (Vec<usize>, Vec<String>) {
    let (mut sizes, mut ids, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list(client, &token, limit).await.expect("ListFiles");
        sizes.push(page.files.len());
        ids.extend(page.files.into_iter().map(|f| f.file_id));
        if page.next_page_token.is_empty() {
            return (sizes, ids);
        }
        token = page.next_page_token;
    }
}

fn ids(response: &ListFilesResponse) -> Vec<String> {
    response.files.iter().map(|f| f.file_id.clone()).collect()
}

store_tests!(
    own_complete_files_newest_first,
    pages_cover_the_list_exactly_once,
    bad_inputs_are_refused
);

/// A user lists only its own complete files, newest first, each exactly as GetFileInfo has it
/// (its download URL signed, fresh, and working); another user and an interrupted upload do not
/// show; a service lists every file; a call without a token is refused.
async fn own_complete_files_newest_first(kind: StoreKind) {
    let server = auth_server(kind).await;
    let addr = server.addr;
    within(120, "own files", async {
        let mut alice = as_user(addr, "alice").await;
        let mut bob = as_user(addr, "bob").await;
        let mut backend = as_service(addr).await;
        let a1 = upload(&mut alice, "a1.txt", b"first").await;
        let b1 = upload(&mut bob, "b1.txt", b"bob's").await;
        let a2 = upload(&mut alice, "a2.txt", b"second").await;
        let s1 = upload(&mut backend, "s1.txt", b"service").await;
        let a3 = upload(&mut alice, "a3.txt", b"third").await;
        // An interrupted resumable upload of alice's: not complete, so not listed.
        let partial = uuid::Uuid::new_v4().to_string();
        let answer = alice
            .upload_file(tokio_stream::iter(vec![
                meta("partial.txt", 100, &partial),
                FileChunk {
                    offset: 0,
                    data: Some(Data::Chunk(vec![1; 10])),
                },
            ]))
            .await;
        assert_eq!(
            answer.unwrap_err().code(),
            Code::InvalidArgument,
            "cut short"
        );

        let mine = list(&mut alice, "", 0).await.unwrap();
        assert_eq!(ids(&mine), [a3.clone(), a2.clone(), a1.clone()]);
        assert_eq!(mine.next_page_token, "");
        for file in &mine.files {
            let info = alice
                .get_file_info(GetFileInfoRequest {
                    file_id: file.file_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            // The URL is signed afresh for each answer; everything else is GetFileInfo's.
            let strip = |m: &FileMetadata| FileMetadata {
                download_url: String::new(),
                ..m.clone()
            };
            assert_eq!(strip(file), strip(&info));
            assert!(file.download_url.contains("sig="), "{}", file.download_url);
            let path = file
                .download_url
                .strip_prefix(&format!("http://{addr}"))
                .expect("on this server");
            let (code, body) = common::http_get(addr, path).await;
            assert_eq!(code, 200);
            let expected = match file.file_id.as_str() {
                id if id == a1 => "first",
                id if id == a2 => "second",
                _ => "third",
            };
            assert_eq!(body, expected);
            assert_eq!(file.checksum, format!("{:x}", Sha256::digest(expected)));
            assert_eq!(file.content_type, "text/plain");
        }
        assert_eq!(
            ids(&list(&mut bob, "", 0).await.unwrap()),
            std::slice::from_ref(&b1)
        );
        assert_eq!(
            ids(&list(&mut backend, "", 0).await.unwrap()),
            [a3, s1, a2, b1, a1],
            "a service sees every file"
        );

        let mut anonymous = common::client_with_header(addr, None).await;
        assert_eq!(
            list(&mut anonymous, "", 0).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    })
    .await;
}

/// Pages of `limit` cover the list exactly once, in order; a file completed while a client
/// pages lands before the first page and disturbs no later one; `limit` 0 means 100, and more
/// than 1,000 means 1,000. With auth off every file is listed.
async fn pages_cover_the_list_exactly_once(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(180, "paging", async {
        let mut client = common::client_with_header(server.addr, None).await;
        let mut uploaded = Vec::new();
        for i in 0..7 {
            uploaded.push(upload(&mut client, &format!("f{i}"), format!("{i}").as_bytes()).await);
        }
        let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();
        let (sizes, ids_seen) = all_pages(&mut client, 3).await;
        assert_eq!(sizes, [3, 3, 1]);
        assert_eq!(ids_seen, newest_first);
        let (sizes, _) = all_pages(&mut client, 7).await;
        assert_eq!(sizes, [7], "an exact fit needs no further page");

        // A new file while paging: the pages already begun go on unchanged.
        let first = list(&mut client, "", 3).await.unwrap();
        let newcomer = upload(&mut client, "new", b"new").await;
        let second = list(&mut client, &first.next_page_token, 3).await.unwrap();
        let third = list(&mut client, &second.next_page_token, 3).await.unwrap();
        let mut paged = ids(&first);
        paged.extend(ids(&second));
        paged.extend(ids(&third));
        assert_eq!(paged, newest_first);
        assert_eq!(third.next_page_token, "");
        assert_eq!(ids(&list(&mut client, "", 1).await.unwrap()), [newcomer]);

        // 0 means 100; more than 1,000 means 1,000.
        for i in uploaded.len() + 1..=101 {
            uploaded.push(upload(&mut client, &format!("f{i}"), b"x").await);
        }
        let default = list(&mut client, "", 0).await.unwrap();
        assert_eq!(default.files.len(), 100);
        assert!(!default.next_page_token.is_empty());
        let rest = list(&mut client, &default.next_page_token, 0)
            .await
            .unwrap();
        assert_eq!(rest.files.len(), 2, "102 files in all");
        assert_eq!(rest.next_page_token, "");
        let clamped = list(&mut client, "", 5_000).await.unwrap();
        assert_eq!(clamped.files.len(), 102);
        assert_eq!(clamped.next_page_token, "");
    })
    .await;
}

/// Page tokens this server did not write are INVALID_ARGUMENT, whatever they hold.
async fn bad_inputs_are_refused(kind: StoreKind) {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let server = auth_server(kind).await;
    within(60, "bad inputs", async {
        let mut alice = as_user(server.addr, "alice").await;
        upload(&mut alice, "one", b"1").await;
        let cases = [
            ("not base64", "***".to_string()),
            ("base64 of nothing useful", b64("hello")),
            ("no separator", b64("12345")),
            (
                "time not a number",
                b64("soon.5f0c9c3e-3f1e-4a8e-9b1a-2c3d4e5f6a7b"),
            ),
            ("id not a UUID", b64("12345.not-a-uuid")),
            (
                "padded base64",
                format!("{}=", b64("1.5f0c9c3e-3f1e-4a8e-9b1a-2c3d4e5f6a7b")),
            ),
            (
                "not UTF-8",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            ),
        ];
        for (what, token) in cases {
            let refused = list(&mut alice, &token, 10).await.unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
            assert_eq!(
                refused.message(),
                "page_token is not one this server returned"
            );
        }
        // A well-formed token past everything is simply the end.
        let end = b64("0.5f0c9c3e-3f1e-4a8e-9b1a-2c3d4e5f6a7b");
        let page = list(&mut alice, &end, 10).await.unwrap();
        assert!(page.files.is_empty() && page.next_page_token.is_empty());
    })
    .await;
}
