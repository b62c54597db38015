//! AWS Signature Version 4 in the `Authorization` header, for S3 requests.
//!
//! Header signatures rather than presigned URLs: they are what the AWS SDKs send, so every
//! S3-compatible server that checks signatures checks these (moto's server verifies only
//! header signatures, through botocore, and answers a presigned URL with a 500 when IAM auth
//! is on), and a signature does not end up in access logs as part of the URL. The payload is not signed (`x-amz-content-sha256:
//! UNSIGNED-PAYLOAD`, which S3 accepts for every request), so a layer streams from disk
//! without being read twice to hash it.
//!
//! Written from AWS's description of the algorithm ("Create a signed AWS API request", the
//! S3 "Authenticating Requests: Using the Authorization Header" pages); the tests check it
//! against the worked example of the S3 documentation, and the end-to-end tests against
//! moto's server with IAM authentication on.

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use std::fmt::Write as _;

/// What `x-amz-content-sha256` says when the body is not hashed.
pub(crate) const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The key and scope of a signature.
pub(crate) struct Signer<'a> {
    /// `AKIA...`/`ASIA...`
    pub access_key_id: &'a str,
    /// The secret key.
    pub secret_access_key: &'a str,
    /// The region signed into the scope.
    pub region: &'a str,
    /// `s3`.
    pub service: &'a str,
}

/// Percent-encodes `s` as SigV4 wants: every byte but `A-Za-z0-9-._~` (and `/` when
/// `keep_slash`) as `%XX`, upper-case hex.
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The canonical query string of `query` (encoded, sorted by name then value); the same
/// string is the query the request is sent with, so that the two cannot differ.
pub(crate) fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode(k, false), encode(v, false)))
        .collect();
    q.sort();
    q.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Signer<'_> {
    /// The `Authorization` header value of a request: `method` on `path` (as sent, already
    /// encoded) with `query` (as [`canonical_query`] gives it), at `amz_date`
    /// (`YYYYMMDDTHHMMSSZ`, also sent as `x-amz-date`), with `headers` (every header that is
    /// signed, `host`, `x-amz-date` and `x-amz-content-sha256` included; names in any case)
    /// and the body's hash `payload` (the `x-amz-content-sha256` value).
    pub(crate) fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        payload: &str,
        amz_date: &str,
    ) -> String {
        let mut hs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| {
                // Values trimmed, inner runs of spaces made one.
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                (k.to_ascii_lowercase(), v)
            })
            .collect();
        hs.sort();
        let signed = hs
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = format!("{method}\n{path}\n{query}\n");
        for (k, v) in &hs {
            let _ = writeln!(canonical, "{k}:{v}");
        }
        let _ = write!(canonical, "\n{signed}\n{payload}");
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let k = hmac(format!("AWS4{}", self.secret_access_key).as_bytes(), date);
        let k = hmac(&k, self.region);
        let k = hmac(&k, self.service);
        let k = hmac(&k, "aws4_request");
        let signature = hex(&hmac(&k, &to_sign));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.access_key_id
        )
    }
}

/// `YYYYMMDDTHHMMSSZ` of `t`.
pub(crate) fn amz_date(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: Signer<'static> = Signer {
        access_key_id: "AKIAIOSFODNN7EXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1",
        service: "s3",
    };
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The GET Object example of the S3 documentation ("Examples: Signature Calculations in
    /// AWS Signature Version 4"): its published signature.
    #[test]
    fn signs_the_documented_get_object_example() {
        let auth = EXAMPLE.authorization(
            "GET",
            "/test.txt",
            "",
            &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The GET Bucket lifecycle example of the same page: a query parameter without a value.
    #[test]
    fn signs_the_documented_lifecycle_example_with_an_empty_query_value() {
        let query = canonical_query(&[("lifecycle", "")]);
        assert_eq!(query, "lifecycle=");
        let auth = EXAMPLE.authorization(
            "GET",
            "/",
            &query,
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
            ],
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert!(
            auth.ends_with(
                "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            ),
            "{auth}"
        );
    }

    #[test]
    fn encodes_keys_and_queries_as_sigv4_wants() {
        assert_eq!(encode("ci/blobs/sha256:ab", true), "ci/blobs/sha256%3Aab");
        assert_eq!(encode("a b+c/é", false), "a%20b%2Bc%2F%C3%A9");
        assert_eq!(
            canonical_query(&[("uploadId", "x/y="), ("partNumber", "2")]),
            "partNumber=2&uploadId=x%2Fy%3D"
        );
        assert_eq!(
            amz_date("2026-12-05T04:05:06Z".parse().unwrap()),
            "20261205T040506Z"
        );
    }
}
