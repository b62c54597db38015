//! `--security-opt` of `kiln run` and `kiln build`, as docker spells it.

use anyhow::Context as _;
use executor::spec::{Seccomp, Security};

/// The confinement `opts` ask for: `seccomp=unconfined`, `seccomp=PROFILE.json` (docker's
/// profile format) and `no-new-privileges[=true]` (always on in kiln). Fails on other
/// options, on `no-new-privileges=false`, and on a profile that cannot be read or parsed
/// (naming the file).
pub fn parse(opts: &[String]) -> anyhow::Result<Security> {
    let mut security = Security::default();
    for opt in opts {
        // docker also accepts the older `seccomp:VALUE`.
        let (key, value) = opt
            .split_once('=')
            .or_else(|| opt.split_once(':'))
            .unwrap_or((opt.as_str(), ""));
        match (key, value) {
            ("seccomp", "unconfined") => security.seccomp = Seccomp::Unconfined,
            ("seccomp", "") => anyhow::bail!(
                "--security-opt {opt}: expected seccomp=unconfined or seccomp=PROFILE.json"
            ),
            ("seccomp", path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading seccomp profile {path}"))?;
                let profile = executor::seccomp::Profile::from_json(&bytes)
                    .with_context(|| format!("seccomp profile {path}"))?;
                security.seccomp = Seccomp::Profile(Box::new(profile));
            }
            ("no-new-privileges", "" | "true") => {}
            _ => anyhow::bail!(
                "--security-opt {opt}: unsupported (kiln knows seccomp=unconfined, seccomp=PROFILE.json and no-new-privileges)"
            ),
        }
    }
    Ok(security)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_options_parse_like_docker() {
        assert_eq!(parse(&[]).expect("none"), Security::default());
        let u = parse(&["seccomp=unconfined".into()]).expect("unconfined");
        assert_eq!(u.seccomp, Seccomp::Unconfined);
        let old = parse(&["seccomp:unconfined".into()]).expect("old syntax");
        assert_eq!(old.seccomp, Seccomp::Unconfined);
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("p.json");
        std::fs::write(&p, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).expect("write");
        let custom = parse(&[format!("seccomp={}", p.display())]).expect("profile");
        assert!(matches!(custom.seccomp, Seccomp::Profile(_)));
        let missing = dir.path().join("missing.json");
        let e = parse(&[format!("seccomp={}", missing.display())]).expect_err("missing");
        assert!(format!("{e:#}").contains("missing.json"), "{e:#}");
        let e = parse(&["apparmor=x".into()]).expect_err("unsupported");
        assert!(e.to_string().contains("unsupported"), "{e}");
    }
}
