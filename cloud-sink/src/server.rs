//! Starting and stopping the sink: storage, TLS, listener, router.
//!
//! [`spawn`] does everything that can fail (validate the config, open storage,
//! load TLS, bind) before it returns, so a caller knows the sink is serving
//! when it gets a [`RunningSink`]. Integration tests use it with `127.0.0.1:0`.
//! It also starts the training worker and one scheduler task per
//! `[[training.schedule]]` entry ([`crate::train::jobs`]); shutting down
//! stops them (the running job is cancelled through its `CancelToken`: it
//! stops at its next fold boundary or stage change, and shutdown waits for it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;
use tracing::info;

use crate::api::AppState;
use crate::auth::OperatorTokens;
use crate::config::{Config, Problem};
use crate::metrics::Metrics;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Storage, StorageError};
use crate::train::jobs::{Jobs, Settings};

/// Why the sink could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<Problem>),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("server task failed: {0}")]
    Task(String),
}

/// A sink that is serving. Drop it and the server keeps running until the
/// runtime stops; call [`RunningSink::shutdown`] to stop it gracefully.
#[derive(Debug)]
pub struct RunningSink {
    local_addr: SocketAddr,
    tls: bool,
    grace: Duration,
    handle: Handle<SocketAddr>,
    task: JoinHandle<std::io::Result<()>>,
    jobs: Arc<Jobs>,
    /// The training worker and the scheduler tasks.
    training: Vec<JoinHandle<()>>,
}

impl RunningSink {
    /// The address actually bound (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the sink serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// Stops accepting, lets in-flight requests finish within the configured
    /// grace period, then returns. A batch being stored when the grace period
    /// ends is either committed or rolled back, never half-stored.
    pub async fn shutdown(self) -> Result<(), SinkError> {
        let grace = self.grace;
        self.shutdown_within(grace).await
    }

    /// [`RunningSink::shutdown`] with an explicit grace period.
    pub async fn shutdown_within(self, grace: Duration) -> Result<(), SinkError> {
        self.handle.graceful_shutdown(Some(grace));
        // Refuses new jobs and cancels the queued and running ones; the
        // running one stops at its next fold boundary or stage change.
        self.jobs.close();
        let mut training = self.training.into_iter();
        // The worker (spawned first) ends once its job has stopped; the
        // schedulers only wait for their next tick. One fold on very large
        // data can take long: wait at most the grace period (10 s at least).
        let worker = training.next();
        for task in training {
            task.abort();
        }
        if let Some(worker) = worker
            && tokio::time::timeout(grace.max(Duration::from_secs(10)), worker)
                .await
                .is_err()
        {
            tracing::warn!("the training job did not stop within the grace period; abandoning it");
        }
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SinkError::Serve(e)),
            Err(e) => Err(SinkError::Task(e.to_string())),
        }
    }
}

/// Validates `config`, opens its SQLite database and starts serving.
pub async fn spawn(config: Config) -> Result<RunningSink, SinkError> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(SinkError::Config(problems));
    }
    let storage = open_storage(&config).await?;
    spawn_with_storage(config, storage).await
}

/// Opens the SQLite storage a config names, on the blocking pool.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, SinkError> {
    let Some(path) = config.storage.sqlite_path.clone() else {
        return Err(SinkError::Config(vec![Problem {
            key: "storage.sqlite_path".to_owned(),
            message: "missing".to_owned(),
        }]));
    };
    let busy = config.storage.busy_timeout;
    let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(&path, busy))
        .await
        .map_err(|e| SinkError::Task(e.to_string()))??;
    Ok(Arc::new(storage))
}

/// Starts serving with an already opened storage (any [`Storage`] implementation).
pub async fn spawn_with_storage(
    config: Config,
    storage: Arc<dyn Storage>,
) -> Result<RunningSink, SinkError> {
    let tls = match &config.tls {
        Some(tls) => match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(load_tls(cert, key, tls.client_ca.as_deref())?),
            _ => return Err(SinkError::Tls("[tls] needs both cert and key".to_owned())),
        },
        None => None,
    };

    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| SinkError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| SinkError::Bind {
        addr: config.listen,
        source,
    })?;

    let operators = config
        .api
        .operator_tokens_file
        .as_deref()
        .map(OperatorTokens::load)
        .transpose()
        .map_err(|message| {
            SinkError::Config(vec![Problem {
                key: "api.operator_tokens_file".to_owned(),
                message,
            }])
        })?;
    let (Some(db_path), Some(models_dir)) =
        (config.storage.sqlite_path.clone(), config.models_dir())
    else {
        return Err(SinkError::Config(vec![Problem {
            key: "storage.sqlite_path".to_owned(),
            message: "missing (the model registry lives in it)".to_owned(),
        }]));
    };
    let metrics = Arc::new(Metrics::new());
    let jobs = Jobs::new(
        storage.clone(),
        metrics.clone(),
        Settings {
            db_path,
            models_dir,
            queue_capacity: config.training.queue_capacity,
            keep_finished: config.training.keep_finished,
            max_readings: config.training.max_readings,
            default_period: config.training.period,
            margin: config.training.margin,
        },
    );
    let app = crate::api::router(AppState::new(
        storage,
        metrics,
        config.batch_limits(),
        jobs.clone(),
        operators,
    ));
    let handle: Handle<SocketAddr> = Handle::new();
    let is_tls = tls.is_some();
    let bind_err = |source| SinkError::Bind {
        addr: config.listen,
        source,
    };
    let task = match tls {
        Some(tls) => {
            let server =
                axum_server::tls_rustls::from_tcp_rustls(listener, tls).map_err(bind_err)?;
            tokio::spawn(server.handle(handle.clone()).serve(app.into_make_service()))
        }
        None => {
            let server = axum_server::from_tcp(listener).map_err(bind_err)?;
            tokio::spawn(server.handle(handle.clone()).serve(app.into_make_service()))
        }
    };
    let mut training = vec![jobs.spawn_worker()];
    training.extend(jobs.spawn_scheduler(config.schedules()));
    info!(address = %local_addr, tls = is_tls, "Serving.");
    Ok(RunningSink {
        local_addr,
        tls: is_tls,
        grace: config.shutdown_grace,
        handle,
        task,
        jobs,
        training,
    })
}

/// Builds the rustls server config with the aws-lc-rs provider passed
/// explicitly (no process-wide default provider needed), HTTP/2 and HTTP/1.1.
/// With `client_ca`, every client must present a certificate that chains to
/// one of its CAs (mutual TLS); the handshake fails otherwise.
fn load_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<RustlsConfig, SinkError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| SinkError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(SinkError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| SinkError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| SinkError::Tls(format!("tls.client_ca {}: {e}", path.display())))?;
            for ca in cas {
                roots.add(ca).map_err(|e| {
                    SinkError::Tls(format!("tls.client_ca {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(SinkError::Tls(format!(
                    "tls.client_ca {}: no certificate found",
                    path.display()
                )));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| SinkError::Tls(format!("tls.client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        SinkError::Tls(format!(
            "certificate and key do not match or are unusable: {e}"
        ))
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(server)))
}
