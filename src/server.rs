//! Builds and runs the server: opens the store, starts the log writer, and serves gRPC (with
//! health and reflection) on one listener until shutdown; `crate::conn` serves each connection.
//!
//! Shutdown order matters and lives only here: stop accepting, end live streams with
//! UNAVAILABLE, let in-flight calls finish (bounded by a grace period), drain the writer, then
//! close the database. Nothing here knows what an RPC does.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::files::BlobStore;
use crate::introspect::{Introspection, RpcMetrics};
use crate::lock::ServerLock;
use crate::log::{Hub, Log, Writer};
use crate::proto::{FILE_DESCRIPTOR_SET, streaming_service_server::StreamingServiceServer};
use crate::service::Api;
use crate::service::files::{FileSettings, Files};
use crate::tls::Tls;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// An opened server: its store is migrated and its writer runs, but it does not serve yet.
/// Tests hold one to look inside (hub receivers, writer figures).
#[derive(Debug)]
pub struct App {
    config: Config,
    log: Log,
    rpc_metrics: RpcMetrics,
    /// TLS for the listener, loaded before anything else opens; `None` serves plaintext.
    tls: Option<Tls>,
    /// Token checks and URL signing; `None` when auth is off.
    auth: Option<crate::auth::Auth>,
    /// The single-server locks on the database and the storage directory, held until the
    /// server has closed both.
    locks: Vec<ServerLock>,
}

impl App {
    pub async fn open(config: Config) -> Result<App> {
        // A zero deadline would close every connection before its first byte, and a zero idle
        // time every connection before its first call.
        if config.tls_handshake_timeout_secs == 0 {
            return Err(Error::Config(
                "--tls-handshake-timeout-secs must be at least 1".into(),
            ));
        }
        if config.idle_connection_secs == 0 {
            return Err(Error::Config(
                "--idle-connection-secs must be at least 1".into(),
            ));
        }
        // Unusable certificate files stop the start before the database is touched.
        let tls = Tls::load(&config)?;
        // Bad auth settings stop the start before anything is opened.
        let auth = crate::auth::Auth::from_config(&config)?;
        // No other server may share the files: its startup sweep would take this one's
        // uploads for leftovers. An unsupported URL is refused here, before anything is
        // created in its name.
        let mut locks = Vec::new();
        if let Some(path) = crate::store::database_lock_path(&config)? {
            locks.push(ServerLock::acquire(&path, "database")?);
        }
        std::fs::create_dir_all(&config.storage_dir).map_err(|e| {
            Error::Config(format!(
                "cannot create the storage directory {}: {e}",
                config.storage_dir.display()
            ))
        })?;
        // On PostgreSQL the replicas share the storage directory by design: uploads are
        // claimed in the database and sweeps take turns under an advisory lock.
        if !config.is_postgres() {
            locks.push(ServerLock::acquire(
                &config.storage_dir.join(crate::lock::STORAGE_LOCK_FILE),
                "storage directory",
            )?);
        }
        let (store, write_queue) = crate::store::open(&config).await?;
        let spill_dir = crate::store::spill_dir(&config)?;
        let hub = Hub::new(config.hub_capacity);
        let writer = Writer::spawn(write_queue, hub.clone())?;
        let shutdown = CancellationToken::new();
        let replicas =
            crate::log::Replicas::start(&store, hub.clone(), &config, shutdown.clone()).await?;
        let log = Log {
            store,
            hub,
            writer,
            replicas,
            shutdown,
            subscriptions: Arc::new(Semaphore::new(config.max_subscriptions)),
            user_subscriptions: crate::limits::PerUserLimit::new(config.max_subscriptions_per_user),
            spill_dir,
        };
        Ok(App {
            config,
            log,
            rpc_metrics: RpcMetrics::default(),
            tls,
            auth,
            locks,
        })
    }

    /// The live fan-out, for introspection.
    pub fn hub(&self) -> &Hub {
        &self.log.hub
    }

    /// The log engine, for introspection.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Serves until `shutdown` resolves, then shuts down in order.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = listener.local_addr()?;
        for lock in &mut self.locks {
            lock.record(Some(addr))?;
        }
        let config = &self.config;

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<StreamingServiceServer<Api>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{addr}")
            })
            .trim_end_matches('/')
            .to_string();
        let files = Files::new(
            self.log.store.clone(),
            BlobStore::open(&config.storage_dir)?,
            FileSettings {
                max_upload_bytes: config.max_upload_bytes,
                max_storage_bytes: config.max_storage_bytes,
                max_storage_bytes_per_user: config.max_storage_bytes_per_user,
                transfer_idle: Duration::from_secs(config.transfer_idle_secs.max(1)),
                upload_expiry: Duration::from_secs(config.upload_expiry_secs),
                public_url,
                public_url_configured: config.public_url.is_some(),
                url_signer: self.auth.as_ref().map(|a| a.url_signer.clone()),
            },
        );
        // On PostgreSQL it waits for no one: when another replica is sweeping, this one skips
        // its startup sweep (an empty report), and claims keep it off other replicas' uploads.
        let report = files.sweep(true).await?;
        tracing::info!(?report, "startup sweep of uploads done");
        let sweeper = tokio::spawn(sweep_periodically(
            files.clone(),
            Duration::from_secs(config.upload_sweep_secs.max(1)),
        ));

        let sessions = tokio_util::task::TaskTracker::new();
        let api = Api::new(self.log.clone(), files.clone(), config, sessions.clone());
        let metric_points_received = api.metric_points_received();
        let api =
            StreamingServiceServer::new(api).max_decoding_message_size(config.max_message_bytes);
        // gRPC and plain HTTP (download URLs) share the listener.
        let routes = Routes::new(health)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(api)
            .into_axum_router()
            .merge(crate::http::router(
                files.clone(),
                self.auth.as_ref().map(|a| a.verifier.clone()),
                Introspection {
                    rpcs: self.rpc_metrics.clone(),
                    log: self.log.clone(),
                    transfers: files.transfers.clone(),
                    metric_points_received,
                },
            ));

        let token = self.log.shutdown.clone();
        let signal = {
            let token = token.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: ending live streams, finishing in-flight calls");
                token.cancel();
            }
        };
        let tls = match &self.tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        };
        // Each connection is served on its own (see `crate::conn`): a deadline to open, GOAWAY
        // when idle, and at shutdown GOAWAY to all, as tonic's one server would.
        let settings = crate::conn::Settings {
            routes: Routes::from(routes),
            rpc_metrics: self.rpc_metrics.clone(),
            verifier: self.auth.as_ref().map(|a| a.verifier.clone()),
            cors: crate::conn::cors_layer(&config.cors_origins, self.auth.is_some())?,
            max_message_bytes: config.max_message_bytes,
            keepalive_interval: config.keepalive_interval(),
            keepalive_timeout: config.keepalive_timeout(),
            max_concurrent_streams: config.max_concurrent_streams,
            open_timeout: self.tls.as_ref().map_or(
                Duration::from_secs(config.tls_handshake_timeout_secs),
                |t| t.handshake_timeout(),
            ),
            idle_timeout: Duration::from_secs(config.idle_connection_secs),
        };
        let server = async {
            tokio::join!(
                signal,
                crate::conn::serve(listener, self.tls.clone(), settings, token.clone())
            );
        };

        tracing::info!(
            %addr,
            database = %crate::secret::redact_url(&config.database_url),
            tls,
            "streamhub serving"
        );
        crate::auth::warn_if_exposed(addr, self.auth.is_some());
        let grace = config.shutdown_grace();
        let grace_elapsed = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = server => {}
            _ = grace_elapsed => tracing::warn!(?grace, "grace period over; dropping remaining calls"),
        }
        health_reporter
            .set_not_serving::<StreamingServiceServer<Api>>()
            .await;

        sweeper.abort();
        // Interrupted uploads record their durable bytes before the database closes.
        if tokio::time::timeout(grace, files.wait_for_uploads())
            .await
            .is_err()
        {
            tracing::warn!("uploads still running after the grace period");
        }
        // Sessions store their leave notices before the writer stops.
        sessions.close();
        if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
            tracing::warn!("chat or collaboration sessions still running after the grace period");
        }
        // Readers and the background checkpointer go first, so that the writer's final
        // truncation of the WAL has no reader to wait for; queued writes need no reader.
        self.log.store.close().await;
        self.log.writer.shutdown().await;
        tracing::info!("streamhub stopped; database closed");
        Ok(())
    }
}

/// Removes expired uploads every `interval`, for as long as the server runs.
async fn sweep_periodically(files: Files, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await; // The startup sweep already ran.
    loop {
        tick.tick().await;
        match files.sweep(false).await {
            Ok(report) => tracing::debug!(?report, "upload sweep done"),
            Err(e) => {
                tracing::error!(error = %crate::error::cause_chain(&e), "upload sweep failed")
            }
        }
    }
}

/// Opens the store and serves on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    App::open(config).await?.serve(listener, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
