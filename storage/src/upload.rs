//! An embeddable upload server in the manner of CDI's upload proxy: the
//! embedding program registers an upload DataVolume and its target, gets a
//! token, and hands it to the client, which sends the image as a raw body
//! or as a multipart form, synchronously (the answer waits for the import)
//! or asynchronously (the answer comes once the body is in; the import's
//! final state is read with [`UploadServer::status`], so a client that
//! drops after the last byte cannot be misled, as BZ#1754920 was).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | POST/PUT | `/v1beta1/upload`, `/v1alpha1/upload` | raw | after the import |
//! | POST/PUT | `/v1beta1/upload-async` | raw | once received |
//! | POST | `/v1beta1/upload-form` | multipart, field `file` | after the import |
//! | POST | `/v1beta1/upload-form-async` | multipart | once received |
//! | GET | `/v1beta1/status` | — | the upload's phase and progress (JSON) |
//! | GET | `/healthz` | — | `OK` |
//!
//! Every upload path needs `Authorization: Bearer <token>`. TLS is on when
//! a certificate is given. The body always goes through scratch space,
//! as the support matrix requires for uploads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use virtkit_core::spec::datavolume::DataVolume;

use crate::import::chunks::{ChunkReader, ChunkSender};
use crate::import::{import_reader, ImportOptions, ImportOutcome, Phase, Progress};

/// A PEM certificate chain and private key for TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity(<redacted>)")
    }
}

/// Why the server could not start or take an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Binding or the runtime.
    #[error("upload server: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key.
    #[error("upload server TLS: {0}")]
    Tls(String),
    /// The DataVolume is not an upload DataVolume.
    #[error("not an upload DataVolume: {0}")]
    NotUpload(String),
}

/// The state of one upload, as [`UploadServer::status`] reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UploadStatus {
    /// Latest progress (phase `UploadReady` until data arrives).
    pub progress: Progress,
    /// The result once final.
    pub outcome: Option<Result<ImportOutcome, String>>,
}

struct Upload {
    dv: DataVolume,
    target: PathBuf,
    status: UploadStatus,
    started: bool,
}

struct Shared {
    uploads: Mutex<HashMap<String, Upload>>,
    changed: Condvar,
    options: ImportOptions,
}

/// A running upload server.
pub struct UploadServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The TLS acceptor new connections use; replaced by
    /// [`UploadServer::replace_tls`] (None: plain HTTP).
    acceptor: Arc<RwLock<Option<tokio_rustls::TlsAcceptor>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn tls_config(id: &TlsIdentity) -> Result<rustls::ServerConfig, UploadError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&id.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| UploadError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
        .map_err(|e| UploadError::Tls(format!("key: {e}")))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| UploadError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| UploadError::Tls(e.to_string()))
}

impl UploadServer {
    /// Listen on `addr` (port 0 picks one), with TLS when `tls` is given;
    /// uploads run with `options` (which must give scratch space).
    pub fn start(
        addr: SocketAddr,
        tls: Option<TlsIdentity>,
        options: ImportOptions,
    ) -> Result<Self, UploadError> {
        let acceptor = tls
            .as_ref()
            .map(tls_config)
            .transpose()?
            .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let acceptor = Arc::new(RwLock::new(acceptor));
        let current = Arc::clone(&acceptor);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            uploads: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            options,
        });
        let router = router(Arc::clone(&shared));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut rx => break,
                        r = listener.accept() => match r {
                            Ok(s) => s,
                            Err(_) => continue,
                        },
                    };
                    let router = router.clone();
                    // Each connection takes the identity current when it
                    // arrives; open ones keep theirs.
                    let acceptor = match current.read() {
                        Ok(a) => a.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    tokio::spawn(async move {
                        let service = hyper_util::service::TowerToHyperService::new(router);
                        let mut http = hyper::server::conn::http1::Builder::new();
                        // A client may shut its side once the body is sent.
                        http.half_close(true);
                        match acceptor {
                            Some(a) => {
                                if let Ok(tls) = a.accept(stream).await {
                                    let io = hyper_util::rt::TokioIo::new(tls);
                                    let _ = http.serve_connection(io, service).await;
                                }
                            }
                            None => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                        }
                    });
                }
            });
        });
        Ok(UploadServer {
            addr,
            shared,
            acceptor,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve a new certificate and key (a renewed certificate) from the
    /// next connection on, without a restart; connections already open
    /// and uploads in progress are not touched. A bad identity is an error
    /// and the current one stays. A server started without TLS stays
    /// plain HTTP.
    pub fn replace_tls(&self, tls: TlsIdentity) -> Result<(), UploadError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&tls)?));
        let mut current = match self.acceptor.write() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        match current.as_mut() {
            Some(a) => {
                *a = acceptor;
                Ok(())
            }
            None => Err(UploadError::Tls(
                "this server was started without TLS; it cannot switch to TLS".into(),
            )),
        }
    }

    /// Accept an upload for `dv` (which must have `source.upload`) into
    /// `target`; returns the token the client must present.
    pub fn register(&self, dv: DataVolume, target: PathBuf) -> Result<String, UploadError> {
        if dv.spec.source.upload.is_none() {
            return Err(UploadError::NotUpload(
                "spec.source.upload is not set".into(),
            ));
        }
        let mut raw = [0u8; 24];
        getrandom::getrandom(&mut raw)
            .map_err(|e| UploadError::Io(std::io::Error::other(e.to_string())))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let status = UploadStatus {
            progress: Progress {
                phase: Phase::UploadReady,
                done: 0,
                total: None,
                message: "waiting for the upload".into(),
            },
            outcome: None,
        };
        lock(&self.shared.uploads).insert(
            token.clone(),
            Upload {
                dv,
                target,
                status,
                started: false,
            },
        );
        Ok(token)
    }

    /// The state of the upload behind `token`.
    pub fn status(&self, token: &str) -> Option<UploadStatus> {
        lock(&self.shared.uploads)
            .get(token)
            .map(|u| u.status.clone())
    }

    /// Wait until the upload behind `token` is final, or `timeout`.
    pub fn wait(&self, token: &str, timeout: Duration) -> Option<UploadStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let mut uploads = lock(&self.shared.uploads);
        loop {
            let status = uploads.get(token)?.status.clone();
            let now = std::time::Instant::now();
            if status.outcome.is_some() || now >= deadline {
                return Some(status);
            }
            uploads = match self.shared.changed.wait_timeout(uploads, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for UploadServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn router(shared: Arc<Shared>) -> Router {
    let raw_sync = |s, h, b| upload(s, h, b, false, false);
    let raw_async = |s, h, b| upload(s, h, b, false, true);
    let form_sync = |s, h, b| upload(s, h, b, true, false);
    let form_async = |s, h, b| upload(s, h, b, true, true);
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/v1beta1/upload", post(raw_sync).put(raw_sync))
        .route("/v1alpha1/upload", post(raw_sync).put(raw_sync))
        .route("/v1beta1/upload-async", post(raw_async).put(raw_async))
        .route("/v1beta1/upload-form", post(form_sync))
        .route("/v1beta1/upload-form-async", post(form_async))
        .route("/v1beta1/status", get(status))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        return (StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    match lock(&shared.uploads).get(token) {
        Some(u) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&u.status).unwrap_or_default(),
        )
            .into_response(),
        None => (StatusCode::UNAUTHORIZED, "unknown token").into_response(),
    }
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    req: Request,
    form: bool,
    asynchronous: bool,
) -> Response {
    let Some(token) = bearer(&headers).map(str::to_string) else {
        return (StatusCode::UNAUTHORIZED, "missing bearer token").into_response();
    };
    let (dv, target) = {
        let mut uploads = lock(&shared.uploads);
        match uploads.get_mut(&token) {
            None => return (StatusCode::UNAUTHORIZED, "unknown token").into_response(),
            Some(u) if u.started => {
                return (StatusCode::CONFLICT, "this upload already received data").into_response()
            }
            Some(u) => {
                u.started = true;
                (u.dv.clone(), u.target.clone())
            }
        }
    };
    let len = if form {
        None
    } else {
        headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    let (tx, reader) = ChunkReader::channel(16);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let worker_shared = Arc::clone(&shared);
    let worker_token = token.clone();
    std::thread::spawn(move || {
        let progress = |p: &Progress| {
            if let Some(u) = lock(&worker_shared.uploads).get_mut(&worker_token) {
                u.status.progress = p.clone();
            }
        };
        let result = import_reader(
            &dv,
            &target,
            Box::new(reader),
            len,
            &worker_shared.options,
            &progress,
        )
        .map_err(|e| e.to_string());
        if let Some(u) = lock(&worker_shared.uploads).get_mut(&worker_token) {
            u.status.outcome = Some(result.clone());
        }
        worker_shared.changed.notify_all();
        let _ = done_tx.send(result);
    });
    // The body is fed from a task of its own, so that it is read to its
    // end even when this handler is dropped because the client hung up
    // right after its last byte. `tx` is consumed there: finished when the
    // body was whole, failed otherwise (a sender dropped without either is
    // a broken-off stream to the import, never a short image).
    let feeder_shared = Arc::clone(&shared);
    let feeder = tokio::spawn(async move {
        if form {
            feed_form(req, &feeder_shared, tx).await
        } else {
            feed(req.into_body(), tx).await
        }
    });
    let fed = feeder
        .await
        .unwrap_or_else(|e| Err(format!("upload body: {e}")));
    if let Err(msg) = fed {
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    if asynchronous {
        return (StatusCode::OK, "upload received; processing").into_response();
    }
    match done_rx.await {
        Ok(Ok(_)) => (StatusCode::OK, "").into_response(),
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "import stopped").into_response(),
    }
}

/// How long, at most, the rest of a body is read and dropped after the
/// import failed.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Run `drain` (which reads and drops the rest of a body) for at most
/// [`LINGER`]. A server that answers while the client is still sending
/// and then closes makes the kernel reset the connection, and the client
/// sees a broken pipe instead of the error response; web servers linger
/// the same way.
async fn linger(drain: impl std::future::Future<Output = ()>) {
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Send a raw body to the import; an error if the client broke off.
async fn feed(body: Body, tx: ChunkSender) -> Result<(), String> {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    // The import stopped (it failed); its error is reported
                    // once the client has stopped sending.
                    linger(async {
                        while let Some(Ok(c)) = stream.next().await {
                            std::hint::black_box(c);
                        }
                    })
                    .await;
                    return Ok(());
                }
            }
            Err(e) => {
                let msg = format!("upload body: {e}");
                tx.fail(std::io::Error::other(msg.clone())).await;
                return Err(msg);
            }
        }
    }
    tx.finish().await;
    Ok(())
}

/// Send the `file` field (or the first field) of a multipart form.
async fn feed_form(req: Request, shared: &Arc<Shared>, tx: ChunkSender) -> Result<(), String> {
    let fail = |tx: ChunkSender, msg: String| async move {
        tx.fail(std::io::Error::other(msg.clone())).await;
        Err(msg)
    };
    let mut form = match Multipart::from_request(req, shared).await {
        Ok(f) => f,
        Err(e) => return fail(tx, format!("multipart form: {e}")).await,
    };
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return fail(tx, "multipart form has no file field".into()).await,
            Err(e) => return fail(tx, format!("multipart form: {e}")).await,
        };
        if field.name().is_some_and(|n| n != "file") && field.file_name().is_none() {
            continue;
        }
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    if tx.send(c).await.is_err() {
                        linger(async { while let Ok(Some(_)) = field.chunk().await {} }).await;
                        return Ok(());
                    }
                }
                Ok(None) => {
                    tx.finish().await;
                    return Ok(());
                }
                Err(e) => return fail(tx, format!("multipart form: {e}")).await,
            }
        }
    }
}
