mod common;
use common::*;
use streamhub::proto::*;

#[tokio::test]
async fn smoke_publish_and_replay() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let e = client.publish_user_event(PublishUserEventRequest { user_id: "u".into(), r#type: 1, data: None, id: String::new() }).await.unwrap().into_inner();
    assert_eq!(e.sequence, 1);
    let mut s = client.stream_user_events(StreamUserEventsRequest { user_id: "u".into(), history_only: true, ..Default::default() }).await.unwrap().into_inner();
    let got = s.message().await.unwrap().unwrap();
    assert_eq!(got, e);
    assert!(s.message().await.unwrap().is_none());
    server.stop().await;
}

#[tokio::test]
async fn smoke_child() {
    let dir = tempfile::tempdir().unwrap();
    let child = ChildServer::spawn(dir.path(), &[]);
    let mut client = connect(&child.url()).await;
    let e = client.publish_user_event(PublishUserEventRequest { user_id: "u".into(), r#type: 1, data: None, id: String::new() }).await.unwrap().into_inner();
    assert_eq!(e.sequence, 1);
    assert!(child.terminate().success());
}
