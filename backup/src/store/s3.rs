//! An S3-compatible bucket: AWS S3, Cloudflare R2, MinIO, Backblaze B2.
//!
//! - Request and response checksums are `WhenRequired`: since SDK 1.69 the defaults add CRC32
//!   trailers that R2, B2 and older MinIO reject. Integrity is our own SHA-256 in the manifest.
//! - The data stream of unknown length goes up as a multipart upload of equal parts (R2 wants
//!   them equal), at most `max_in_flight` at once; on any error the upload is aborted.
//! - A manifest is written with `If-None-Match: *`: never overwritten.
//! - Credentials come from the standard AWS chain; retries (throttling, 5xx, timeouts) are the
//!   SDK's standard mode, bounded (4 attempts).
//! - Every request is bounded by `store.timeout` of silence, never by its length: a request
//!   without a body must get its answer's first byte within it (each attempt, and all its
//!   attempts within twice that); a download fails
//!   when no byte came for that long; an upload (a part, a manifest, a WAL file) goes through a
//!   client without that bound, its body handed over in 64 KiB frames whose every hand-over
//!   marks progress ([`Progress`]), and fails when nothing moved for that long plus the time
//!   the kernel's send buffer (up to 4 MiB) takes to empty at 64 KiB/s. An upload that keeps
//!   moving at 64 KiB/s or more is never cut. A wait past 10 s says what it waits for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::ObjectInfo;
use crate::error::Error;
use crate::pipeline::Msg;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// Fixed part size; default: 8 MiB, or more so that 10,000 parts cover the database.
    pub part_size: Option<usize>,
    /// Parts uploading at once (default 2).
    pub max_in_flight: usize,
    /// A PEM file of CA certificates trusted besides the system's (`store.ca_file`,
    /// `AWS_CA_BUNDLE`): MinIO on a LAN, a corporate proxy.
    pub ca_file: Option<std::path::PathBuf>,
    /// `store.timeout`: the longest silence any request may keep (see the module's doc).
    pub timeout: Duration,
    /// `store.group`, for a `file://` store shared by two users (the deploy hook's and
    /// PostgreSQL's archiver): directories `2770` and files `0640` for this group.
    pub group: Option<u32>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            endpoint: None,
            region: None,
            path_style: false,
            part_size: None,
            max_in_flight: 2,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            group: None,
        }
    }
}

/// `store.timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct S3Store {
    /// Requests without a body: each attempt must be answered within `store.timeout`.
    client: Client,
    /// CompleteMultipartUpload: the first byte of its answer within `store.timeout`, the rest
    /// as long as it takes.
    finishing: Client,
    /// Uploads: bounded by their progress instead ([`watched`]).
    uploads: Client,
    bucket: String,
    prefix: String,
    opts: StoreOptions,
}

const MIN_PART: usize = 8 << 20;
const MAX_PARTS: u64 = 10_000;

impl S3Store {
    /// `ca_pem`: the contents of `opts.ca_file`, read by the caller.
    pub async fn new(
        bucket: String,
        prefix: String,
        opts: StoreOptions,
        ca_pem: Option<Vec<u8>>,
    ) -> S3Store {
        let mut http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring));
        if let Some(pem) = ca_pem {
            use aws_smithy_http_client::tls::{TlsContext, TrustStore};
            let context = TlsContext::builder()
                .with_trust_store(TrustStore::default().with_pem_certificate(pem))
                .build()
                .expect("a TLS context with a trust store always builds");
            http = http.tls_context(context);
        }
        let http = http.build_https();
        let region = opts.region.clone().unwrap_or_else(|| {
            let r2 = opts
                .endpoint
                .as_deref()
                .is_some_and(|e| e.contains(".r2.cloudflarestorage.com"));
            if r2 { "auto" } else { "us-east-1" }.to_string()
        });
        let connect = opts.timeout.min(Duration::from_secs(10));
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(region))
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .timeout_config(TimeoutConfig::builder().connect_timeout(connect).build())
            .load()
            .await;
        let client = |timeouts: TimeoutConfig| {
            let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(opts.path_style)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                .timeout_config(timeouts);
            if let Some(endpoint) = &opts.endpoint {
                conf = conf.endpoint_url(endpoint);
            }
            Client::from_conf(conf.build())
        };
        S3Store {
            // Each attempt answered within the timeout, and the request (its retries
            // included) within twice that: a store that took the connection and went silent
            // is not retried for minutes.
            client: client(
                TimeoutConfig::builder()
                    .connect_timeout(connect)
                    .read_timeout(opts.timeout)
                    .operation_timeout(opts.timeout * 2)
                    .build(),
            ),
            // CompleteMultipartUpload answers at once and may then take minutes to finish its
            // answer (S3 sends whitespace meanwhile): its first byte is bounded, not its end.
            finishing: client(
                TimeoutConfig::builder()
                    .connect_timeout(connect)
                    .read_timeout(opts.timeout)
                    .build(),
            ),
            uploads: client(TimeoutConfig::builder().connect_timeout(connect).build()),
            bucket,
            prefix,
            opts,
        }
    }

    /// A request without a body, said in the log from 10 s on (each attempt is bounded by the
    /// client's `store.timeout`).
    fn asked<'a, T: 'a>(
        &self,
        what: String,
        fut: impl std::future::Future<Output = T> + Send + 'a,
    ) -> Boxed<'a, T> {
        Box::pin(dbconn::wait::announced(what, fut))
    }

    /// The next chunk of a download, failed when none came for `store.timeout`.
    async fn next_chunk(
        &self,
        body: &mut ByteStream,
        key: &str,
    ) -> Result<Option<bytes::Bytes>, Error> {
        match tokio::time::timeout(self.opts.timeout, body.try_next()).await {
            Ok(chunk) => chunk.map_err(|e| self.failed(key, chain(&e))),
            Err(_) => Err(self.failed(
                key,
                format!(
                    "no byte came for {} (store.timeout); the store stopped sending",
                    humanize(self.opts.timeout)
                ),
            )),
        }
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    pub fn chunk_size(&self, size_hint: u64) -> usize {
        self.opts.part_size.unwrap_or_else(|| {
            let needed = size_hint.div_ceil(MAX_PARTS) as usize;
            needed.next_multiple_of(1 << 20).max(MIN_PART)
        })
    }

    fn err<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        what: &str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> Error {
        Error::Store {
            what: format!("{what} {}", self.describe(key)),
            message: sdk_message(&e),
        }
    }

    pub async fn put_stream(&self, key: &str, mut rx: mpsc::Receiver<Msg>) -> Result<u64, Error> {
        let full = self.full_key(key);
        let incomplete =
            || Error::Source("the stream ended before the snapshot was complete".into());
        // One chunk then Done: a plain PUT. Otherwise a multipart upload.
        let Some(Msg::Data(first)) = rx.recv().await else {
            return Err(incomplete());
        };
        let second = match rx.recv().await {
            Some(Msg::Done) => {
                let progress = Progress::default();
                let req = self
                    .uploads
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&full)
                    .content_md5(md5(&first))
                    .body(progress.body(first));
                watched(
                    self.opts.timeout,
                    format!("uploading {}", self.describe(key)),
                    progress,
                    async { req.send().await.map_err(|e| self.err("uploading", key, e)) },
                )
                .await?;
                return self.size(key).await;
            }
            Some(Msg::Data(d)) => d,
            None => return Err(incomplete()),
        };
        let upload = self
            .asked(
                format!("starting the multipart upload of {}", self.describe(key)),
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .send(),
            )
            .await
            .map_err(|e| self.err("starting the multipart upload of", key, e))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = self
            .upload_parts(key, &upload_id, first, second, &mut rx)
            .await;
        match result {
            Ok(parts) => {
                let completed = self
                    .asked(
                        format!("completing the multipart upload of {}", self.describe(key)),
                        self.finishing
                            .complete_multipart_upload()
                            .bucket(&self.bucket)
                            .key(&full)
                            .upload_id(&upload_id)
                            .multipart_upload(
                                CompletedMultipartUpload::builder()
                                    .set_parts(Some(parts))
                                    .build(),
                            )
                            .send(),
                    )
                    .await;
                if let Err(e) = completed {
                    // The server may have completed it anyway (a lost answer): the object is
                    // this run's own new key and has no manifest, so it goes, with the upload.
                    let err = self.err("completing the multipart upload of", key, e);
                    self.abort(&full, &upload_id).await;
                    if let Err(d) = self.delete(key).await {
                        tracing::warn!("could not remove the incomplete object: {d}");
                    }
                    return Err(err);
                }
                self.size(key).await
            }
            Err(e) => {
                self.abort(&full, &upload_id).await;
                Err(e)
            }
        }
    }

    /// Aborts a multipart upload, best effort: a dead server cannot take the abort either;
    /// prune aborts uploads left older than a day.
    async fn abort(&self, full_key: &str, upload_id: &str) {
        let abort = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(a) = abort {
            tracing::warn!(
                "could not abort the multipart upload {upload_id}: {}",
                sdk_message(&a)
            );
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: Vec<u8>,
        second: Vec<u8>,
        rx: &mut mpsc::Receiver<Msg>,
    ) -> Result<Vec<CompletedPart>, Error> {
        let full = self.full_key(key);
        let max_in_flight = self.opts.max_in_flight.max(1);
        let mut in_flight: JoinSet<Result<CompletedPart, Error>> = JoinSet::new();
        let mut done_parts = Vec::new();
        let mut pending = vec![first, second].into_iter();
        let mut number = 0i32;
        let mut complete = false;
        loop {
            let chunk = match pending.next() {
                Some(c) => c,
                None => match rx.recv().await {
                    Some(Msg::Data(c)) => c,
                    Some(Msg::Done) => {
                        complete = true;
                        break;
                    }
                    None => break,
                },
            };
            while in_flight.len() >= max_in_flight {
                done_parts.push(join(in_flight.join_next().await.expect("not empty"))?);
            }
            number += 1;
            let progress = Progress::default();
            let req = self
                .uploads
                .upload_part()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(upload_id)
                .part_number(number)
                .content_md5(md5(&chunk))
                .body(progress.body(chunk));
            let what = format!("uploading part {number} of {}", self.describe(key));
            let part = watched(self.opts.timeout, what.clone(), progress, async move {
                let out = req.send().await.map_err(|e| Error::Store {
                    what,
                    message: sdk_message(&e),
                })?;
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build())
            });
            in_flight.spawn(part);
        }
        while let Some(r) = in_flight.join_next().await {
            done_parts.push(join(r)?);
        }
        if !complete {
            return Err(Error::Source(
                "the stream ended before the snapshot was complete".into(),
            ));
        }
        done_parts.sort_by_key(|p| p.part_number());
        Ok(done_parts)
    }

    async fn size(&self, key: &str) -> Result<u64, Error> {
        let head = self
            .asked(
                format!("checking {}", self.describe(key)),
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(self.full_key(key))
                    .send(),
            )
            .await
            .map_err(|e| self.err("checking", key, e))?;
        Ok(head.content_length().unwrap_or(0).max(0) as u64)
    }

    pub async fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let progress = Progress::default();
        let req = self
            .uploads
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .if_none_match("*")
            .content_md5(md5(bytes))
            .body(progress.body(bytes.to_vec()));
        let result = watched(
            self.opts.timeout,
            format!("writing {}", self.describe(key)),
            progress,
            async { Ok(req.send().await) },
        )
        .await?;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("PreconditionFailed") => {
                Err(Error::Exists(self.describe(key)))
            }
            Err(e) => Err(self.err("writing", key, e)),
        }
    }

    pub async fn download(&self, key: &str, to: &mut impl std::io::Write) -> Result<(), Error> {
        let mut body = self.body(key).await?;
        while let Some(chunk) = self.next_chunk(&mut body, key).await? {
            to.write_all(&chunk)
                .map_err(|e| self.failed(key, e.to_string()))?;
        }
        Ok(())
    }

    /// [`Store::download_blocks`](super::Store::download_blocks) from S3.
    pub(super) async fn download_blocks(
        &self,
        key: &str,
        sink: &mut super::BlockSink,
    ) -> Result<(), Error> {
        let mut body = self.body(key).await?;
        while let Some(chunk) = self.next_chunk(&mut body, key).await? {
            sink.push(&chunk).await;
        }
        Ok(())
    }

    async fn body(&self, key: &str) -> Result<ByteStream, Error> {
        let out = self
            .asked(
                format!("downloading {}", self.describe(key)),
                self.client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(self.full_key(key))
                    .send(),
            )
            .await
            .map_err(|e| match e.code() {
                Some("NoSuchKey") => Error::Missing(self.describe(key)),
                _ => self.err("downloading", key, e),
            })?;
        Ok(out.body)
    }

    fn failed(&self, key: &str, message: String) -> Error {
        Error::Store {
            what: format!("downloading {}", self.describe(key)),
            message,
        }
    }

    pub async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let progress = Progress::default();
        let req = self
            .uploads
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_md5(md5(bytes))
            .body(progress.body(bytes.to_vec()));
        watched(
            self.opts.timeout,
            format!("writing {}", self.describe(key)),
            progress,
            async { req.send().await.map_err(|e| self.err("writing", key, e)) },
        )
        .await?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, Error> {
        let mut body = self.body(key).await?;
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body, key).await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The folders directly under the store's root (its prefix): the names before the next `/`.
    pub async fn folders(&self) -> Result<Vec<String>, Error> {
        let root = self.folder_prefix("");
        let mut out = Vec::new();
        self.each_page("", None, |page| {
            for p in page.common_prefixes() {
                let Some(p) = p.prefix() else { continue };
                let name = p.strip_prefix(&root).unwrap_or(p).trim_end_matches('/');
                if !name.is_empty() {
                    out.push(name.to_string());
                }
            }
        })
        .await?;
        Ok(out)
    }

    pub async fn list_after(
        &self,
        dir: &str,
        after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, Error> {
        let strip = self.folder_prefix("");
        let mut out = Vec::new();
        self.each_page(dir, after, |page| {
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                out.push(ObjectInfo {
                    key: k.strip_prefix(&strip).unwrap_or(k).to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
        })
        .await?;
        Ok(out)
    }

    /// The bucket's key prefix of folder `dir` (`""`: the store's root), ending in `/` (the root of
    /// a store without a prefix: empty).
    fn folder_prefix(&self, dir: &str) -> String {
        let full = self.full_key(dir);
        let full = full.trim_end_matches('/');
        if full.is_empty() {
            String::new()
        } else {
            format!("{full}/")
        }
    }

    /// One level of folder `dir` (after the name `after`), each page of the listing handed to
    /// `page` as it comes, every page asked within the store's timeout.
    async fn each_page(
        &self,
        dir: &str,
        after: Option<&str>,
        mut page: impl FnMut(aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output),
    ) -> Result<(), Error> {
        let prefix = self.folder_prefix(dir);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .set_start_after(after.map(|a| format!("{prefix}{a}")))
            .into_paginator()
            .send();
        while let Some(next) = self
            .asked(format!("listing {}", self.describe(dir)), pages.next())
            .await
        {
            page(next.map_err(|e| self.err("listing", dir, e))?);
        }
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.asked(
            format!("deleting {}", self.describe(key)),
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .send(),
        )
        .await
        .map_err(|e| self.err("deleting", key, e))?;
        Ok(())
    }

    /// Aborts multipart uploads under `dir` started before `before` (left by a killed run)
    /// whose key (relative to the store's prefix) `is_ours` accepts. Every page of the listing
    /// (1,000 uploads each) is read.
    pub async fn abort_stale_uploads(
        &self,
        dir: &str,
        before: SystemTime,
        dry_run: bool,
        is_ours: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<String>, Error> {
        let prefix = format!("{}/", self.full_key(dir).trim_end_matches('/'));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.err("listing multipart uploads of", dir, e))?;
            uploads.extend(page.uploads().iter().cloned());
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        let mut aborted = Vec::new();
        for u in &uploads {
            let started = u.initiated().and_then(|t| SystemTime::try_from(*t).ok());
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            if !is_ours(key.strip_prefix(&strip).unwrap_or(key)) {
                continue;
            }
            if started.is_some_and(|s| s < before) {
                if !dry_run {
                    self.client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await
                        .map_err(|e| self.err("aborting a stale upload of", dir, e))?;
                }
                aborted.push(format!("{key} (upload {id})"));
            }
        }
        Ok(aborted)
    }
}

/// A store request's future, boxed as a trait object: the SDK's futures are large and deep, and
/// every caller's future (a drill's, a restore's) would otherwise carry them inline.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// `fut` (one upload, its retries included), failed when nothing moved for `limit` by
/// `progress` (see the module's doc), and said in the log from 10 s on.
fn watched<'a, T: Send + 'a>(
    limit: Duration,
    what: String,
    progress: Progress,
    fut: impl std::future::Future<Output = Result<T, Error>> + Send + 'a,
) -> Boxed<'a, Result<T, Error>> {
    Box::pin(watched_inner(limit, what, progress, fut))
}

async fn watched_inner<T>(
    limit: Duration,
    what: String,
    progress: Progress,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let idle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if progress.stalled(limit) {
                return;
            }
        }
    };
    let raced = async {
        tokio::select! {
            out = fut => Some(out),
            () = idle => None,
        }
    };
    match dbconn::wait::announced(&what, raced).await {
        Some(out) => out,
        None => Err(Error::Store {
            what,
            message: format!(
                "nothing moved for {} (store.timeout): the store took the connection but stopped reading or answering; is it overloaded or unreachable?",
                humanize(limit)
            ),
        }),
    }
}

/// An upload's progress: when its body last handed a frame to the connection, and how many
/// bytes it handed over (in this attempt).
#[derive(Clone)]
struct Progress {
    started: Instant,
    /// Milliseconds since `started` of the last frame (or of the attempt's start).
    last: Arc<AtomicU64>,
    handed: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            started: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
            handed: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// The frames a body is handed over in; what the kernel's send buffer may hold (Linux's
/// default ceiling, `net.ipv4.tcp_wmem`), and the slowest rate an upload still counts as moving
/// at.
const FRAME: usize = 64 << 10;
const IN_FLIGHT: u64 = 4 << 20;
const SLOWEST: u64 = 64 << 10;

impl Progress {
    fn mark(&self, bytes: u64) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
        self.last
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether nothing moved for `limit`, plus the time what the kernel may still be sending
    /// takes at [`SLOWEST`]: the body is handed over in bursts, each when the send buffer has
    /// room again, so a link moving at 1 MiB/s can leave seconds between two frames once up to
    /// [`IN_FLIGHT`] bytes are buffered.
    fn stalled(&self, limit: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let since = Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)));
        let buffered = self.handed.load(Ordering::Relaxed).min(IN_FLIGHT);
        since > limit + Duration::from_secs(buffered / SLOWEST)
    }

    /// `bytes` as a request body handed over in frames that mark this progress (built anew for
    /// each attempt).
    fn body(&self, bytes: Vec<u8>) -> ByteStream {
        let bytes = bytes::Bytes::from(bytes);
        let progress = self.clone();
        ByteStream::new(SdkBody::retryable(move || {
            progress.handed.store(0, Ordering::Relaxed);
            progress.mark(0);
            SdkBody::from_body_1_x(Frames {
                data: bytes.clone(),
                at: 0,
                progress: progress.clone(),
            })
        }))
    }
}

/// A body of bytes in memory, handed over a frame at a time.
struct Frames {
    data: bytes::Bytes,
    at: usize,
    progress: Progress,
}

impl http_body::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.at >= this.data.len() {
            return std::task::Poll::Ready(None);
        }
        let end = (this.at + FRAME).min(this.data.len());
        let frame = this.data.slice(this.at..end);
        this.progress.mark((end - this.at) as u64);
        this.at = end;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.data.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact((self.data.len() - self.at) as u64)
    }
}

fn humanize(d: Duration) -> String {
    dbconn::error::humanize(d)
}

/// `Content-MD5` of an upload's body: a streamed body is signed `UNSIGNED-PAYLOAD`, so this is
/// what makes the server refuse bytes that changed on the way (`BadDigest`).
fn md5(bytes: &[u8]) -> String {
    use md5::Digest;
    aws_smithy_types::base64::encode(md5::Md5::digest(bytes))
}

/// The service's code and message (and what to check), or the transport error's causes; not
/// the SDK's debug dump.
fn sdk_message<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("error");
            let mut s = format!("{code} (HTTP {})", se.raw().status().as_u16());
            if let Some(m) = err.message() {
                s.push_str(&format!(": {m}"));
            }
            let hint = match code {
                "SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied" => {
                    "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile) and the bucket's permissions"
                }
                "NoSuchBucket" => "; create the bucket, or fix the bucket in store.url",
                "PermanentRedirect" | "AuthorizationHeaderMalformed" => "; the region is wrong: set store.region (R2: auto)",
                _ => "",
            };
            s + hint
        }
        SdkError::DispatchFailure(_) if chain(e).to_ascii_lowercase().contains("credentials") => {
            format!(
                "no AWS credentials for the store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in /etc/dbward/env (the units' EnvironmentFile; in a shell, export them), or use a profile or an instance role. What the SDK tried: {}",
                chain(e)
            )
        }
        SdkError::DispatchFailure(_) if untrusted_certificate(e) => format!(
            "{}; the server's certificate is not trusted: give its CA's PEM file as store.ca_file or AWS_CA_BUNDLE (or add the CA to the system's store)",
            chain(e)
        ),
        SdkError::TimeoutError(_) => format!(
            "{}; the store did not answer within store.timeout: is store.endpoint (--s3-endpoint) right, reachable and not overloaded?",
            chain(e)
        ),
        SdkError::DispatchFailure(d) if d.is_timeout() => format!(
            "{}; the store did not answer within store.timeout: is store.endpoint (--s3-endpoint) right, reachable and not overloaded?",
            chain(e)
        ),
        SdkError::DispatchFailure(_) => {
            format!(
                "{}; is store.endpoint (--s3-endpoint) right and reachable?",
                chain(e)
            )
        }
        _ => chain(e),
    }
}

/// Whether rustls refused the server's certificate somewhere in `e`'s causes. An `io::Error`
/// hides the error it wraps from `source()` (it returns the wrapped error's own source), so
/// both its wrapped error and its source are looked at.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    if matches!(
        e.downcast_ref::<rustls::Error>(),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    ) {
        return true;
    }
    let wrapped = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    wrapped.is_some_and(untrusted_certificate) || e.source().is_some_and(untrusted_certificate)
}

/// An error and its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(&format!(": {text}"));
        }
        src = inner.source();
    }
    s
}

fn join(
    r: Result<Result<CompletedPart, Error>, tokio::task::JoinError>,
) -> Result<CompletedPart, Error> {
    r.map_err(|e| Error::Source(format!("an upload task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_cover_the_database_in_10000() {
        let s = S3Store::new("b".into(), String::new(), StoreOptions::default(), None).await;
        assert_eq!(s.chunk_size(1 << 30), 8 << 20);
        let tib = 1u64 << 40;
        let part = s.chunk_size(tib) as u64;
        assert!(part * MAX_PARTS >= tib && part.is_multiple_of(1 << 20));
    }
}
