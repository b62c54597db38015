//! `type=s3`: Amazon S3 and S3-compatible servers. rusty-s3 builds the object URLs (path or
//! virtual-host style, keys encoded), [`super::sigv4`] signs every request in its
//! `Authorization` header, reqwest sends it: the payload is not signed (`UNSIGNED-PAYLOAD`),
//! so a layer streams from disk without being read twice to hash it.

use super::object::Head;
use super::object::{
    ObjResult, ObjectError, Secret, check, file_body, head_of, retry, upload_in_parts, xml_text,
};
use super::sigv4;
use reqwest::Method;
use rusty_s3::{Bucket, UrlStyle};
use std::path::Path;
use std::time::Duration;

/// Where the bucket is and who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Its region (signed into every request).
    pub region: String,
    /// An S3-compatible server instead of AWS (`http://127.0.0.1:9000`).
    pub endpoint_url: Option<String>,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub use_path_style: bool,
    /// None: anonymous (unsigned) requests.
    pub credentials: Option<S3Credentials>,
}

/// Static AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AKIA...`
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: Secret,
    /// For temporary credentials.
    pub session_token: Option<Secret>,
}

/// A bucket's client.
#[derive(Debug)]
pub(crate) struct S3Client {
    bucket: Bucket,
    credentials: Option<S3Credentials>,
    http: reqwest::Client,
}

impl S3Client {
    /// Fails when the endpoint cannot name the bucket.
    pub(crate) fn new(c: &S3Config, http: reqwest::Client) -> ObjResult<S3Client> {
        let endpoint = c
            .endpoint_url
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", c.region));
        let url = url::Url::parse(&endpoint).map_err(|source| ObjectError::Url {
            url: endpoint.clone(),
            source,
        })?;
        let style = if c.use_path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket =
            Bucket::new(url, style, c.bucket.clone(), c.region.clone()).map_err(|source| {
                ObjectError::Bucket {
                    bucket: c.bucket.clone(),
                    url: endpoint,
                    source,
                }
            })?;
        Ok(S3Client {
            bucket,
            credentials: c.credentials.clone(),
            http,
        })
    }

    /// A request of `method` on `key` with `query` and the further signed `headers`
    /// (`x-amz-copy-source`...), signed in the `Authorization` header (unsigned payload).
    fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut url = self.bucket.object_url(key);
        let query = sigv4::canonical_query(query);
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        let mut req = self.http.request(method.clone(), url.clone());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let Some(c) = &self.credentials else {
            return req;
        };
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let date = sigv4::amz_date(jiff::Timestamp::now());
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", &host),
            ("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD),
            ("x-amz-date", &date),
        ];
        if let Some(t) = &c.session_token {
            signed.push(("x-amz-security-token", &t.0));
        }
        signed.extend_from_slice(headers);
        let signer = sigv4::Signer {
            access_key_id: &c.access_key_id,
            secret_access_key: &c.secret_access_key.0,
            region: self.bucket.region(),
            service: "s3",
        };
        let auth = signer.authorization(
            method.as_str(),
            url.path(),
            &query,
            &signed,
            sigv4::UNSIGNED_PAYLOAD,
            &date,
        );
        req = req
            .header("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD)
            .header("x-amz-date", &date)
            .header(reqwest::header::AUTHORIZATION, auth);
        if let Some(t) = &c.session_token {
            req = req.header("x-amz-security-token", &t.0);
        }
        req
    }

    pub(crate) async fn head(&self, key: &str) -> ObjResult<Option<Head>> {
        let req = self.request(Method::HEAD, key, &[], &[]);
        match check(req.send().await, "HEAD", key, true).await {
            Ok(resp) => Ok(resp.as_ref().map(head_of)),
            // A HEAD answer has no body to name the error (SignatureDoesNotMatch,
            // InvalidToken...): ask again with a GET of the first byte, which has one.
            Err(ObjectError::Status {
                status, code: None, ..
            }) if (400..500).contains(&status) && status != 404 => {
                let req = self
                    .request(Method::GET, key, &[], &[])
                    .header(reqwest::header::RANGE, "bytes=0-0");
                let code = match check(req.send().await, "GET", key, true).await {
                    Err(ObjectError::Status { code, .. }) => code,
                    _ => None,
                };
                Err(ObjectError::Status {
                    op: "HEAD",
                    key: key.to_owned(),
                    status,
                    code,
                })
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn get(&self, key: &str) -> ObjResult<Option<reqwest::Response>> {
        let req = self.request(Method::GET, key, &[], &[]);
        check(req.send().await, "GET", key, true).await
    }

    pub(crate) async fn put(&self, key: &str, body: reqwest::Body, len: u64) -> ObjResult<()> {
        let req = self
            .request(Method::PUT, key, &[], &[])
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body);
        check(req.send().await, "PUT", key, false).await.map(drop)
    }

    /// CopyObject onto itself with new metadata: S3 refuses a copy that changes nothing.
    pub(crate) async fn touch(&self, key: &str) -> ObjResult<()> {
        let encoded = self.bucket.object_url(key);
        let base = self.bucket.base_url().path().len();
        let source = format!("/{}/{}", self.bucket.name(), &encoded.path()[base..]);
        let headers = [
            ("x-amz-copy-source", source.as_str()),
            ("x-amz-metadata-directive", "REPLACE"),
        ];
        let req = self
            .request(Method::PUT, key, &[], &headers)
            .header(reqwest::header::CONTENT_LENGTH, 0);
        check(req.send().await, "PUT (copy)", key, false)
            .await
            .map(drop)
    }

    /// A multipart upload of `path`: create, upload the parts (each retried alone), complete.
    /// A failed upload is aborted so that its parts do not linger (and cost).
    pub(crate) async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        part_size: u64,
        parallel: usize,
    ) -> ObjResult<()> {
        let id = retry(|| async {
            let req = self
                .request(Method::POST, key, &[("uploads", "")], &[])
                .header(reqwest::header::CONTENT_LENGTH, 0);
            let body = answer_text(req, "POST (create multipart upload)", key).await?;
            xml_text(&body, "UploadId")
                .map(str::to_owned)
                .ok_or_else(|| ObjectError::Answer {
                    op: "POST (create multipart upload)",
                    key: key.to_owned(),
                    what: "UploadId",
                })
        })
        .await?;
        let result = self
            .upload_parts(key, &id, path, size, part_size, parallel)
            .await;
        if result.is_err() {
            let req = self.request(Method::DELETE, key, &[("uploadId", &id)], &[]);
            if let Err(error) = req.send().await {
                tracing::debug!(%error, key, "aborting a multipart upload failed");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        id: &str,
        path: &Path,
        size: u64,
        part_size: u64,
        parallel: usize,
    ) -> ObjResult<()> {
        let etags = upload_in_parts(size, part_size, parallel, |i, offset, len| async move {
            let n = (i + 1).to_string();
            retry(|| async {
                let body = file_body(path, offset, len).await?;
                let req = self
                    .request(
                        Method::PUT,
                        key,
                        &[("partNumber", &n), ("uploadId", id)],
                        &[],
                    )
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body);
                let resp = check(req.send().await, "PUT (upload part)", key, false)
                    .await?
                    .expect("only missing_ok gives None");
                resp.headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| ObjectError::Answer {
                        op: "PUT (upload part)",
                        key: key.to_owned(),
                        what: "ETag",
                    })
            })
            .await
        })
        .await?;
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in (1u64..).zip(&etags) {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        retry(|| async {
            let req = self
                .request(Method::POST, key, &[("uploadId", id)], &[])
                .body(xml.clone());
            // S3 may answer 200 and put the error in the body (a slow completion).
            let body = answer_text(req, "POST (complete multipart upload)", key).await?;
            match xml_text(&body, "Code") {
                Some(code) => Err(ObjectError::Status {
                    op: "POST (complete multipart upload)",
                    key: key.to_owned(),
                    status: 500,
                    code: Some(code.to_owned()),
                }),
                None => Ok(()),
            }
        })
        .await
    }
}

/// Sends `req` (operation `op` on `key`) and returns the body of its successful answer.
async fn answer_text(
    req: reqwest::RequestBuilder,
    op: &'static str,
    key: &str,
) -> ObjResult<String> {
    let resp = check(req.send().await, op, key, false)
        .await?
        .expect("only missing_ok gives None");
    resp.text().await.map_err(|source| ObjectError::Network {
        op,
        key: key.to_owned(),
        source,
    })
}

/// Parses `touch_refresh` (BuildKit takes Go durations: `24h`, `30m`, `90s`, `1h30m`).
///
/// Returns None for anything else.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn requests_name_the_bucket_by_style_and_carry_the_signature() {
        let mut c = S3Config {
            bucket: "cache".into(),
            region: "eu-west-1".into(),
            endpoint_url: Some("http://127.0.0.1:9000".into()),
            use_path_style: true,
            credentials: Some(S3Credentials {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: Secret("s".into()),
                session_token: Some(Secret("tok".into())),
            }),
        };
        let client = S3Client::new(&c, reqwest::Client::new()).unwrap();
        let req = client
            .request(
                Method::PUT,
                "blobs/sha256:ab",
                &[("uploadId", "a/b"), ("partNumber", "1")],
                &[],
            )
            .build()
            .unwrap();
        let u = req.url();
        assert_eq!(u.host_str(), Some("127.0.0.1"));
        assert_eq!(u.path(), "/cache/blobs/sha256%3Aab");
        assert_eq!(u.query(), Some("partNumber=1&uploadId=a%2Fb"));
        let h = req.headers();
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
                && auth.contains("/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="),
            "{auth}"
        );
        assert_eq!(h["x-amz-security-token"], "tok");
        assert_eq!(h["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        // Virtual-host style cannot put a bucket in front of an IP address.
        c.use_path_style = false;
        let e = S3Client::new(&c, reqwest::Client::new()).unwrap_err();
        assert!(e.to_string().contains("use_path_style=true"), "{e}");
        c.endpoint_url = Some("http://minio.internal:9000".into());
        let client = S3Client::new(&c, reqwest::Client::new()).unwrap();
        let req = client.request(Method::GET, "k", &[], &[]).build().unwrap();
        assert_eq!(req.url().as_str(), "http://cache.minio.internal:9000/k");
    }
}
