//! The server's own surface: health, reflection, and configuration defaults.

mod common;

use common::TestServer;
use tokio_stream::StreamExt;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test]
async fn health_reports_the_service_as_serving() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "streaming.v1.StreamingService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_and_describes_the_contract() {
    let server = TestServer::start().await;
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "streaming.v1.StreamingService".into(),
            )),
        },
    ]);
    let mut responses = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"streaming.v1.StreamingService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    use prost::Message;
    let file = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .find(|f| f.name() == "streaming/v1/streaming.proto")
        .expect("the contract's file");
    let service = &file.service[0];
    assert_eq!(service.name(), "StreamingService");
    assert_eq!(service.method.len(), 23, "every RPC of the contract");
}

#[test]
fn default_config_matches_the_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = streamhub::Config::in_dir(dir.path());
    assert_eq!(config.sync, streamhub::config::SyncMode::Full);
    assert_eq!(config.max_event_data_bytes, 64 * 1024);
    assert_eq!(config.keepalive_interval_secs, 30);
    assert_eq!(config.keepalive_timeout_secs, 10);
    if std::env::var_os("STREAMHUB_LISTEN").is_none() {
        assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    }
}

#[tokio::test]
async fn metrics_count_open_streams_status_codes_and_hub_receivers() {
    use streamhub::proto::{PublishUserEventRequest, StreamUserEventsRequest, UserEventType};
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client
        .publish_user_event(PublishUserEventRequest {
            user_id: "ann".into(),
            r#type: UserEventType::Login as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let bad = client
        .publish_user_event(PublishUserEventRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut tail = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tail.next().await.unwrap().unwrap().sequence, 1);

    let text = common::scrape(server.addr).await;
    let open = r#"streamhub_rpc_open{rpc="StreamUserEvents"}"#;
    assert_eq!(common::metric(&text, open), Some(1), "{text}");
    assert_eq!(common::metric(&text, "streamhub_hub_receivers"), Some(1));
    let ok = r#"streamhub_rpc_finished_total{rpc="PublishUserEvent",code="OK"}"#;
    let invalid = r#"streamhub_rpc_finished_total{rpc="PublishUserEvent",code="INVALID_ARGUMENT"}"#;
    assert_eq!(common::metric(&text, ok), Some(1), "{text}");
    assert_eq!(common::metric(&text, invalid), Some(1));
    assert_eq!(
        common::metric(&text, "streamhub_writer_records_total"),
        Some(1)
    );

    // A stream counts until it ends: dropping it brings the gauges back to zero.
    drop(tail);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = common::scrape(server.addr).await;
        if common::metric(&text, open) == Some(0)
            && common::metric(&text, "streamhub_hub_receivers") == Some(0)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
