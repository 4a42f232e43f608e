//! The gRPC surface: one `StreamingService` implementation that hands each RPC to its
//! capability module (`events`, …). Capabilities that are not built yet answer UNIMPLEMENTED.
//!
//! Who may act as which user is decided here, before a capability runs, by the one rule in
//! `auth::act_as` (streamed requests pass the caller's identity down for their first message).
//! This layer validates and translates; it never writes SQL and never runs its own
//! replay-then-tail loop: both belong to the log engine.

pub mod chat;
pub mod collab;
pub mod events;
pub mod files;
pub mod live;
pub mod metrics;
pub mod notify;
mod session;
pub mod streams;

use crate::error::{Error, Result};
use crate::log::{Log, Subscription};
use crate::proto::{self, streaming_service_server::StreamingService};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Longest stream key (user, room or document id), in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest client-chosen idempotency id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// A stream key must be present, short and printable: it names a log. Public so that property
/// tests (tests/fuzz.rs) can hold it to its rule directly; requests reach it only through RPCs.
pub fn validate_key(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{field} is required")));
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "{field} is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// An optional client-chosen id: empty means "the server assigns one". Public for the same reason
/// as [`validate_key`].
pub fn validate_client_id(id: &str) -> Result<Option<String>> {
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(format!(
            "id is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            "id must not contain whitespace or control characters",
        ));
    }
    Ok(Some(id.to_string()))
}

/// The service behind every RPC.
#[derive(Debug, Clone)]
pub struct Api {
    events: events::Events,
    files: files::Files,
    chat: chat::Chat,
    collab: collab::Collab,
    notify: notify::Notify,
    metrics: metrics::Metrics,
    live: live::Live,
    streams: streams::Streams,
}

impl Api {
    /// Points received by CollectMetrics, for `/metrics`.
    pub fn metric_points_received(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.metrics.points_received.clone()
    }

    /// `sessions` tracks the tasks of bidirectional sessions, so shutdown can let them store
    /// their leave notices before the writer stops.
    pub fn new(
        log: Log,
        files: files::Files,
        config: &crate::config::Config,
        sessions: tokio_util::task::TaskTracker,
    ) -> Self {
        Api {
            files,
            chat: chat::Chat::new(log.clone(), config, sessions.clone()),
            collab: collab::Collab::new(log.clone(), config, sessions),
            notify: notify::Notify::new(log.clone(), config),
            metrics: metrics::Metrics::new(log.clone(), config),
            live: live::Live::new(config, log.shutdown.clone()),
            streams: streams::Streams::new(log.store.clone()),
            events: events::Events::new(
                log,
                events::EventLimits {
                    max_data_bytes: config.max_event_data_bytes,
                    max_batch_records: config.max_batch_records,
                    max_batch_bytes: config.max_batch_bytes,
                },
            ),
        }
    }
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl StreamingService for Api {
    type StreamUserEventsStream = Subscription<crate::wire::UserEventOut>;

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn stream_user_events(
        &self,
        request: Request<proto::StreamUserEventsRequest>,
    ) -> Result<Response<Self::StreamUserEventsStream>, Status> {
        let holder = crate::auth::limited_user(crate::auth::identity_of(&request).as_ref());
        let request = crate::auth::authorize(request, |r| &mut r.user_id)?;
        Ok(Response::new(self.events.stream(request, holder)?))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn publish_user_event(
        &self,
        request: Request<proto::PublishUserEventRequest>,
    ) -> Result<Response<crate::wire::UserEventOut>, Status> {
        let request = crate::auth::authorize(request, |r| &mut r.user_id)?;
        Ok(Response::new(self.events.publish(request).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn process_data_batch(
        &self,
        request: Request<Streaming<proto::DataRecord>>,
    ) -> Result<Response<proto::BatchProcessingResult>, Status> {
        let cancelled = crate::cancel::flag_of(&request);
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.events
                .import(request.into_inner(), cancelled, identity)
                .await?,
        ))
    }

    type DownloadFileStream = ResponseStream<proto::FileChunk>;

    #[tracing::instrument(skip_all, fields(file_id = %request.get_ref().file_id))]
    async fn download_file(
        &self,
        request: Request<proto::DownloadFileRequest>,
    ) -> Result<Response<Self::DownloadFileStream>, Status> {
        let identity = crate::auth::identity_of(&request);
        let chunks = self
            .files
            .download(request.into_inner(), identity.as_ref())
            .await?;
        Ok(Response::new(Box::pin(chunks)))
    }

    type SubscribeToNotificationsStream = ResponseStream<proto::Notification>;

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn subscribe_to_notifications(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeToNotificationsStream>, Status> {
        let holder = crate::auth::limited_user(crate::auth::identity_of(&request).as_ref());
        let request = crate::auth::authorize(request, |r| &mut r.user_id)?;
        Ok(Response::new(self.notify.subscribe(request, holder).await?))
    }

    #[tracing::instrument(skip_all)]
    async fn upload_file(
        &self,
        request: Request<Streaming<proto::FileChunk>>,
    ) -> Result<Response<proto::UploadFileResponse>, Status> {
        let cancelled = crate::cancel::flag_of(&request);
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.files
                .upload_in_task(request.into_inner(), cancelled, identity)
                .await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn collect_metrics(
        &self,
        request: Request<Streaming<proto::MetricData>>,
    ) -> Result<Response<proto::MetricsCollectionResult>, Status> {
        let identity = crate::auth::identity_of(&request);
        crate::auth::may_use_metrics(identity.as_ref(), crate::auth::MetricsAccess::Write)?;
        let cancelled = crate::cancel::flag_of(&request);
        Ok(Response::new(
            self.metrics
                .collect(request.into_inner(), cancelled)
                .await?,
        ))
    }

    type ChatStream = ResponseStream<proto::ChatMessage>;

    #[tracing::instrument(skip_all)]
    async fn chat(
        &self,
        request: Request<Streaming<proto::ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let cancelled = crate::cancel::flag_of(&request);
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.chat
                .session(request.into_inner(), cancelled, identity)
                .await?,
        ))
    }

    type CollaborateStream = ResponseStream<proto::CollaborationEvent>;

    #[tracing::instrument(skip_all)]
    async fn collaborate(
        &self,
        request: Request<Streaming<proto::CollaborationEvent>>,
    ) -> Result<Response<Self::CollaborateStream>, Status> {
        let cancelled = crate::cancel::flag_of(&request);
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.collab
                .session(request.into_inner(), cancelled, identity)
                .await?,
        ))
    }

    type ProcessLiveDataStream = ResponseStream<proto::ProcessingResult>;

    #[tracing::instrument(skip_all)]
    async fn process_live_data(
        &self,
        request: Request<Streaming<proto::DataInput>>,
    ) -> Result<Response<Self::ProcessLiveDataStream>, Status> {
        Ok(Response::new(self.live.process(request.into_inner())?))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn publish_notification(
        &self,
        request: Request<proto::PublishNotificationRequest>,
    ) -> Result<Response<proto::Notification>, Status> {
        let request = crate::auth::authorize(request, |r| &mut r.user_id)?;
        Ok(Response::new(self.notify.publish(request).await?))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn acknowledge_notifications(
        &self,
        request: Request<proto::AcknowledgeNotificationsRequest>,
    ) -> Result<Response<proto::AcknowledgeNotificationsResponse>, Status> {
        let request = crate::auth::authorize(request, |r| &mut r.user_id)?;
        Ok(Response::new(self.notify.acknowledge(request).await?))
    }

    #[tracing::instrument(skip_all, fields(file_id = %request.get_ref().file_id))]
    async fn get_file_info(
        &self,
        request: Request<proto::GetFileInfoRequest>,
    ) -> Result<Response<proto::FileMetadata>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.files
                .info(&request.into_inner().file_id, identity.as_ref())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(file_id = %request.get_ref().file_id))]
    async fn get_upload_status(
        &self,
        request: Request<proto::GetUploadStatusRequest>,
    ) -> Result<Response<proto::GetUploadStatusResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.files
                .status(&request.into_inner().file_id, identity.as_ref())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(room_id = %request.get_ref().room_id))]
    async fn get_chat_history(
        &self,
        request: Request<proto::GetChatHistoryRequest>,
    ) -> Result<Response<proto::GetChatHistoryResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.chat
                .history(request.into_inner(), identity.as_ref())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn query_metrics(
        &self,
        request: Request<proto::QueryMetricsRequest>,
    ) -> Result<Response<proto::QueryMetricsResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        crate::auth::may_use_metrics(identity.as_ref(), crate::auth::MetricsAccess::Read)?;
        Ok(Response::new(
            self.metrics.query(request.into_inner()).await?,
        ))
    }

    // ------------------------------------------------ browser calls: chat and collaboration

    type JoinRoomStream = ResponseStream<proto::ChatMessage>;

    #[tracing::instrument(skip_all, fields(room_id = %request.get_ref().room_id))]
    async fn join_room(
        &self,
        request: Request<proto::JoinRoomRequest>,
    ) -> Result<Response<Self::JoinRoomStream>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.chat.join_room(request.into_inner(), identity).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(room_id = %request.get_ref().room_id))]
    async fn send_chat_message(
        &self,
        request: Request<proto::ChatMessage>,
    ) -> Result<Response<proto::ChatMessage>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.chat
                .send(request.into_inner(), identity.as_ref())
                .await?,
        ))
    }

    type OpenDocumentStream = ResponseStream<proto::CollaborationEvent>;

    #[tracing::instrument(skip_all, fields(document_id = %request.get_ref().document_id))]
    async fn open_document(
        &self,
        request: Request<proto::OpenDocumentRequest>,
    ) -> Result<Response<Self::OpenDocumentStream>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.collab
                .open_document(request.into_inner(), identity)
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(document_id = %request.get_ref().document_id))]
    async fn submit_collaboration_event(
        &self,
        request: Request<proto::CollaborationEvent>,
    ) -> Result<Response<proto::CollaborationEvent>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.collab
                .submit(request.into_inner(), identity.as_ref())
                .await?,
        ))
    }

    // ------------------------------------------------------- browser calls: listings

    #[tracing::instrument(skip_all)]
    async fn list_streams(
        &self,
        request: Request<proto::ListStreamsRequest>,
    ) -> Result<Response<proto::ListStreamsResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.streams
                .list(request.into_inner(), identity.as_ref())
                .await?,
        ))
    }

    // ---------------------------------------------------------------- ListFiles

    #[tracing::instrument(skip_all)]
    async fn list_files(
        &self,
        request: Request<proto::ListFilesRequest>,
    ) -> Result<Response<proto::ListFilesResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        Ok(Response::new(
            self.files
                .list(request.into_inner(), identity.as_ref())
                .await?,
        ))
    }

    // --------------------------------------------------------- ListMetricSeries

    #[tracing::instrument(skip_all)]
    async fn list_metric_series(
        &self,
        request: Request<proto::ListMetricSeriesRequest>,
    ) -> Result<Response<proto::ListMetricSeriesResponse>, Status> {
        let identity = crate::auth::identity_of(&request);
        crate::auth::may_use_metrics(identity.as_ref(), crate::auth::MetricsAccess::Read)?;
        Ok(Response::new(
            self.metrics.list_series(request.into_inner()).await?,
        ))
    }
}
