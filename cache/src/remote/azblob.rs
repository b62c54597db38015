//! `type=azblob`: Azure Blob Storage (and azurite) through its REST API, authenticated with
//! SharedKey (the account key signs each request) or a SAS token carried by the account URL.
//! Blobs are block blobs: one Put Blob, or Put Block per part and a Put Block List that
//! commits them all at once.

use super::object::{
    Head, ObjResult, ObjectError, Secret, check, file_body, head_of, retry, upload_in_parts,
};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use reqwest::Method;
use std::path::Path;

/// The REST API version kiln speaks (azurite 3.x and Azure both accept it).
const API_VERSION: &str = "2021-08-06";

/// Where the container is and who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzConfig {
    /// `https://ACCOUNT.blob.core.windows.net` or `http://127.0.0.1:10000/devstoreaccount1`
    /// (without its SAS query string, which is in [`AzAuth::Sas`]).
    pub account_url: String,
    /// The storage account.
    pub account_name: String,
    /// The container (BuildKit's default: `buildkit-cache`).
    pub container: String,
    /// How requests are authorised.
    pub auth: AzAuth,
}

/// How Azure requests are authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzAuth {
    /// The base64 account key (`secret_access_key`): SharedKey signatures.
    SharedKey(Secret),
    /// A SAS token (the account URL's query string), appended to every request.
    Sas(Secret),
    /// Neither (a public container can be read).
    Anonymous,
}

/// A container's client.
#[derive(Debug)]
pub(crate) struct AzClient {
    base: url::Url,
    account: String,
    container: String,
    key: Option<Vec<u8>>,
    sas: Option<Secret>,
    http: reqwest::Client,
}

impl AzClient {
    /// Fails when the URL or key is unusable.
    pub(crate) fn new(c: &AzConfig, http: reqwest::Client) -> ObjResult<AzClient> {
        let mut base = url::Url::parse(&c.account_url).map_err(|source| ObjectError::Url {
            url: c.account_url.clone(),
            source,
        })?;
        base.set_query(None);
        let key = match &c.auth {
            AzAuth::SharedKey(k) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(k.0.trim())
                    .map_err(|source| ObjectError::Key { source })?,
            ),
            _ => None,
        };
        let sas = match &c.auth {
            AzAuth::Sas(s) => Some(s.clone()),
            _ => None,
        };
        Ok(AzClient {
            base,
            account: c.account_name.clone(),
            container: c.container.clone(),
            key,
            sas,
            http,
        })
    }

    /// The URL of `key` in the container (the container itself when `key` is None) with
    /// `query` and the SAS token.
    fn url(&self, key: Option<&str>, query: &[(&str, &str)]) -> url::Url {
        let mut u = self.base.clone();
        {
            let mut segs = u.path_segments_mut().expect("http(s) URLs have a path");
            segs.pop_if_empty().push(&self.container);
            if let Some(k) = key {
                segs.extend(k.split('/'));
            }
        }
        let sas = self.sas.as_ref().map(|s| s.0.trim_start_matches('?'));
        let mut q: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(k, v)
                    .finish()
            })
            .collect();
        q.extend(sas.filter(|s| !s.is_empty()).map(str::to_owned));
        if !q.is_empty() {
            u.set_query(Some(&q.join("&")));
        }
        u
    }

    /// A request with the version and date headers, signed when there is a key.
    /// `ms_headers` are further `x-ms-*` headers; `len` the body's length.
    fn request(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        ms_headers: &[(&str, &str)],
        len: u64,
    ) -> reqwest::RequestBuilder {
        let url = self.url(key, query);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&jiff::Timestamp::now())
            .expect("the current time prints");
        let mut headers: Vec<(&str, &str)> =
            vec![("x-ms-date", &date), ("x-ms-version", API_VERSION)];
        headers.extend_from_slice(ms_headers);
        headers.sort();
        let mut req = self.http.request(method.clone(), url.clone());
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        if method == Method::PUT || method == Method::POST {
            req = req.header(reqwest::header::CONTENT_LENGTH, len);
        }
        if let Some(k) = &self.key {
            let sig = self.sign(k, &method, &url, &headers, len, query);
            req = req.header(
                reqwest::header::AUTHORIZATION,
                format!("SharedKey {}:{sig}", self.account),
            );
        }
        req
    }

    /// The SharedKey signature of a request (the Blob service's string-to-sign: the verb,
    /// eleven standard headers of which kiln sends only Content-Length, the `x-ms-` headers,
    /// then `/account/path` and the query parameters, sorted and decoded).
    fn sign(
        &self,
        key: &[u8],
        method: &Method,
        url: &url::Url,
        ms_headers: &[(&str, &str)],
        len: u64,
        query: &[(&str, &str)],
    ) -> String {
        let length = if len == 0 {
            String::new()
        } else {
            len.to_string()
        };
        let mut s = format!("{method}\n\n\n{length}\n\n\n\n\n\n\n\n\n");
        for (k, v) in ms_headers {
            s.push_str(&format!("{k}:{v}\n"));
        }
        s.push_str(&format!("/{}{}", self.account, url.path()));
        let mut q: Vec<(String, &str)> = query
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect();
        q.sort();
        for (k, v) in q {
            s.push_str(&format!("\n{k}:{v}"));
        }
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(s.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    pub(crate) async fn head(&self, key: &str) -> ObjResult<Option<Head>> {
        let req = self.request(Method::HEAD, Some(key), &[], &[], 0);
        let resp = check(req.send().await, "HEAD", key, true).await?;
        Ok(resp.as_ref().map(head_of))
    }

    pub(crate) async fn get(&self, key: &str) -> ObjResult<Option<reqwest::Response>> {
        let req = self.request(Method::GET, Some(key), &[], &[], 0);
        check(req.send().await, "GET", key, true).await
    }

    pub(crate) async fn put(&self, key: &str, body: reqwest::Body, len: u64) -> ObjResult<()> {
        let req = self
            .request(
                Method::PUT,
                Some(key),
                &[],
                &[("x-ms-blob-type", "BlockBlob")],
                len,
            )
            .body(body);
        check(req.send().await, "PUT", key, false).await.map(drop)
    }

    /// Creates the container unless it exists (BuildKit does the same on first use).
    pub(crate) async fn create_container(&self) -> ObjResult<()> {
        let req = self.request(Method::PUT, None, &[("restype", "container")], &[], 0);
        let name = format!("container {}", self.container);
        match check(req.send().await, "PUT (create container)", &name, false).await {
            Ok(_) => Ok(()),
            Err(ObjectError::Status { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Put Block for each part (uncommitted, invisible to readers), then Put Block List,
    /// which makes the blob appear whole.
    pub(crate) async fn put_blocks(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        part_size: u64,
        parallel: usize,
    ) -> ObjResult<()> {
        let parts = size.div_ceil(part_size);
        // Block ids must all have the same length within a blob.
        let ids: Vec<String> = (0..parts)
            .map(|i| base64::engine::general_purpose::STANDARD.encode(format!("kiln-{i:08}")))
            .collect();
        upload_in_parts(size, part_size, parallel, |i, offset, len| {
            let id = ids[i as usize].as_str();
            async move {
                retry(|| async {
                    let body = file_body(path, offset, len).await?;
                    let req = self
                        .request(
                            Method::PUT,
                            Some(key),
                            &[("blockid", id), ("comp", "block")],
                            &[],
                            len,
                        )
                        .body(body);
                    check(req.send().await, "PUT (block)", key, false)
                        .await
                        .map(drop)
                })
                .await
            }
        })
        .await?;
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for id in &ids {
            xml.push_str(&format!("<Latest>{id}</Latest>"));
        }
        xml.push_str("</BlockList>");
        retry(|| async {
            let req = self
                .request(
                    Method::PUT,
                    Some(key),
                    &[("comp", "blocklist")],
                    &[],
                    xml.len() as u64,
                )
                .body(xml.clone());
            check(req.send().await, "PUT (block list)", key, false)
                .await
                .map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str, auth: AzAuth) -> AzClient {
        let c = AzConfig {
            account_url: url.into(),
            account_name: "devstoreaccount1".into(),
            container: "cache".into(),
            auth,
        };
        AzClient::new(&c, reqwest::Client::new()).unwrap()
    }

    #[test]
    fn urls_keep_the_emulators_account_path_and_the_sas_token() {
        let c = client(
            "http://127.0.0.1:10000/devstoreaccount1?sv=2021&sig=abc%2B",
            AzAuth::Sas(Secret("sv=2021&sig=abc%2B".into())),
        );
        let u = c.url(Some("ci/blobs/sha256:ab"), &[("comp", "block")]);
        assert_eq!(u.path(), "/devstoreaccount1/cache/ci/blobs/sha256:ab");
        assert_eq!(u.query(), Some("comp=block&sv=2021&sig=abc%2B"));
        let c = client("https://acct.blob.core.windows.net/", AzAuth::Anonymous);
        assert_eq!(c.url(None, &[]).path(), "/cache");
    }

    #[test]
    fn shared_key_signs_the_documented_string() {
        // The string-to-sign of Azure's documentation for a Put Block with Content-Length,
        // computed by hand and signed with a known key.
        let key = b"key";
        let c = client(
            "http://127.0.0.1:10000/devstoreaccount1",
            AzAuth::SharedKey(Secret(
                base64::engine::general_purpose::STANDARD.encode(key),
            )),
        );
        let url = c.url(Some("b"), &[("comp", "block"), ("blockid", "QQ==")]);
        let headers = [
            ("x-ms-date", "Sat, 05 Dec 2026 02:00:00 GMT"),
            ("x-ms-version", API_VERSION),
        ];
        let sig = c.sign(
            key,
            &Method::PUT,
            &url,
            &headers,
            5,
            &[("comp", "block"), ("blockid", "QQ==")],
        );
        let expected_string = format!(
            "PUT\n\n\n5\n\n\n\n\n\n\n\n\nx-ms-date:Sat, 05 Dec 2026 02:00:00 GMT\nx-ms-version:{API_VERSION}\n\
             /devstoreaccount1/devstoreaccount1/cache/b\nblockid:QQ==\ncomp:block"
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(expected_string.as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sig, want);
    }
}
