//! The bucket's versioning and Object Lock settings, as S3 reports them,
//! and lock extensions (PutObjectRetention).

use sha2::{Digest, Sha256};

use super::sign::{Method, Req};
use super::transport::between;
use super::{S3Store, base64};
use crate::error::{Error, Result, StoreCause};
use crate::store::Op;
use crate::store::lock::Lock;

impl S3Store {
    /// A bucket configuration (`?versioning`, `?object-lock`): its XML.
    pub(super) fn bucket_config(&self, query: &'static str) -> Result<String> {
        let what = format!("{}?{query}", self.bucket.name());
        self.retry("GET", &what, || {
            let req = Req::new(Method::Get, None).query(query, "");
            let body = self.get_bounded(&req, Op::Config, 64 << 10)?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }

    pub(super) fn bucket_versioned(&self) -> Result<bool> {
        match self.bucket_config("versioning") {
            Ok(x) => Ok(matches!(
                between(&x, "<Status>", "</Status>").map(str::trim),
                Some("Enabled" | "Suspended")
            )),
            // A server without versioning (s3s-fs).
            Err(Error::Store {
                cause: StoreCause::Http { status: 501, .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn bucket_lock_enabled(&self) -> Result<bool> {
        match self.bucket_config("object-lock") {
            Ok(x) => Ok(
                between(&x, "<ObjectLockEnabled>", "</ObjectLockEnabled>").map(str::trim)
                    == Some("Enabled"),
            ),
            Err(Error::Store {
                cause: StoreCause::Http { status, code, .. },
                ..
            }) if status == 501 || code == "ObjectLockConfigurationNotFoundError" => Ok(false),
            // S3 answers a bucket without Object Lock with a 404
            // (ObjectLockConfigurationNotFoundError).
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn check_bucket_lock(&self) -> Result<()> {
        let bucket = self.bucket.name();
        let versioning = self.bucket_config("versioning")?;
        if between(&versioning, "<Status>", "</Status>").map(str::trim) != Some("Enabled") {
            return Err(Error::Setup(format!(
                "object_lock is set, but the bucket {bucket} does not have versioning enabled: \
                 Object Lock needs a bucket created with it (see \"Ransomware-proof setup\" in \
                 README.md)"
            )));
        }
        let enabled = self.bucket_lock_enabled()?;
        if !enabled {
            return Err(Error::Setup(format!(
                "object_lock is set, but the bucket {bucket} does not have Object Lock enabled: \
                 it must be created with Object Lock (see \"Ransomware-proof setup\" in \
                 README.md)"
            )));
        }
        Ok(())
    }

    pub(super) fn put_retention(&self, key: &str, version: Option<&str>, lock: Lock) -> Result<()> {
        let full = self.checked("RETENTION", key)?;
        let body = lock.retention_xml();
        let sha: [u8; 32] = Sha256::digest(body.as_bytes()).into();
        self.retry("RETENTION", &full, || {
            let mut req = Req::new(Method::Put, Some(&full))
                .query("retention", "")
                .header("content-type", "application/xml".into())
                .header("x-amz-checksum-sha256", base64(&sha))
                .header("x-amz-sdk-checksum-algorithm", "SHA256".into())
                .payload(&sha);
            if let Some(v) = version {
                req = req.query("versionId", v);
            }
            let s = self.signed(&req)?;
            self.stats.count(Op::Retention, body.len() as u64, 0);
            let mut resp = s
                .apply(self.bounded(self.agent.put(&s.url), Some(body.len() as u64)))
                .send(body.as_bytes())
                .map_err(|e| self.transport(e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_failure(&mut resp))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;
    use crate::store::s3::fake::*;

    #[test]
    fn lock_headers_and_bucket_settings_are_read_defensively() {
        let (s, _) = fake(vec![with_headers(&[
            "x-amz-object-lock-retain-until-date: 2026-12-05T15:50:44Z",
            "x-amz-object-lock-mode: COMPLIANCE",
        ])]);
        let m = s.stat(K, false).unwrap().unwrap();
        assert_eq!(
            m.locked_until,
            crate::time::parse_compact("2026-12-05T155044Z")
        );
        for bad in [
            "x-amz-object-lock-retain-until-date: soon",
            "x-amz-object-lock-retain-until-date: 99999-1",
        ] {
            let (s, _) = fake(vec![with_headers(&[bad])]);
            assert_eq!(
                s.stat(K, false).unwrap().unwrap().locked_until,
                None,
                "{bad}"
            );
        }
        // Versioning suspended, never enabled, or not answered.
        let (s, _) = fake(vec![answer(
            "200 OK",
            b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>",
        )]);
        assert!(s.versioned().unwrap());
        let e = {
            let (s, _) = fake(vec![answer("200 OK", b"<VersioningConfiguration/>")]);
            s.check_lock_setup().unwrap_err().to_string()
        };
        assert!(e.contains("bucket b") && e.contains("versioning"), "{e}");
        let (s, _) = fake(vec![
            answer(
                "200 OK",
                b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
            ),
            answer(
                "404 Not Found",
                b"<Error><Code>ObjectLockConfigurationNotFoundError</Code></Error>",
            ),
        ]);
        let e = s.check_lock_setup().unwrap_err().to_string();
        assert!(e.contains("bucket b") && e.contains("Object Lock"), "{e}");
    }
}
