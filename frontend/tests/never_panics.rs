//! Property test: any text is either accepted or rejected with an error; the frontend never
//! panics (parse, check, base_images, lower, word expansion, --change). Bounded to a few
//! seconds.

use cache::oci::{Digest, ImageConfig, Platform};
use frontend::{BaseImage, BuildOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn platform() -> Platform {
    Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
        os_version: None,
    }
}

fn exercise(text: &str) {
    let lex = frontend::shell::Lex::new('\\');
    let _ = lex.process_words(text, &|k| (k.len() % 2 == 0).then(|| k.to_owned()));
    let mut cfg = cache::oci::ContainerConfig::default();
    let _ = frontend::apply_changes(&mut cfg, &[text.to_owned()]);
    let Ok(df) = frontend::parse(text) else {
        return;
    };
    let mut opts = BuildOptions::new(platform());
    opts.build_args.insert("A".into(), "x y".into());
    let _ = frontend::check(&df, &opts);
    let Ok(refs) = frontend::base_images(&df, &opts) else {
        return;
    };
    let bases: BTreeMap<String, BaseImage> = refs
        .iter()
        .map(|r| {
            let mut config = ImageConfig::empty(&platform());
            config.config.on_build = vec!["RUN true".into(), "COPY a b".into()];
            (
                r.reference.clone(),
                BaseImage {
                    manifest: Digest::of(r.reference.as_bytes()),
                    config,
                },
            )
        })
        .collect();
    if let Ok(g) = frontend::lower(&df, &opts, &bases) {
        let _ = g.dump();
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_./:-]{0,8}",
        Just("$A".to_owned()),
        Just("${A:-d}".to_owned()),
        Just("${A#*}".to_owned()),
        Just("${A//x/y}".to_owned()),
        Just("${".to_owned()),
        Just("\\".to_owned()),
        Just("`".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("[\"a\", \"b\"]".to_owned()),
        Just("[".to_owned()),
        Just("<<EOF".to_owned()),
        Just("<<-'X'".to_owned()),
        Just("--from=0".to_owned()),
        Just("--mount=type=cache,target=x".to_owned()),
        Just("--chmod=755".to_owned()),
        Just("AS".to_owned()),
        Just("=".to_owned()),
        Just("#".to_owned()),
        Just("\t".to_owned()),
        Just("é☃".to_owned()),
        // Deeper than shell::MAX_NESTING (issue 10: this overflowed the stack).
        Just("${a:-".repeat(100)),
    ]
}

fn keyword() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM"),
        Just("RUN"),
        Just("COPY"),
        Just("ADD"),
        Just("ENV"),
        Just("ARG"),
        Just("WORKDIR"),
        Just("ONBUILD"),
        Just("HEALTHCHECK"),
        Just("CMD"),
        Just("ENTRYPOINT"),
        Just("SHELL"),
        Just("EXPOSE"),
        Just("LABEL"),
        Just("VOLUME"),
        Just("USER"),
        Just("# escape=`"),
        Just("EOF"),
        Just("x"),
    ]
    .prop_map(str::to_owned)
}

fn line() -> impl Strategy<Value = String> {
    (
        keyword(),
        prop::collection::vec(word(), 0..6),
        prop::bool::ANY,
    )
        .prop_map(|(k, ws, cont)| format!("{k} {}{}", ws.join(" "), if cont { " \\" } else { "" }))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "(?s).{0,200}") {
        exercise(&text);
    }

    /// Bytes that are not UTF-8 (issue 10): decoded or refused, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        lines in prop::collection::vec(line(), 0..6),
        junk in prop::collection::vec(any::<u8>(), 0..16),
        at in 0usize..200,
    ) {
        let mut bytes = format!("FROM busybox\n{}\n", lines.join("\n")).into_bytes();
        let at = at.min(bytes.len());
        bytes.splice(at..at, junk);
        if let Ok(text) = frontend::decode(&bytes) {
            exercise(&text);
        }
    }

    #[test]
    fn dockerfile_like_text_never_panics(lines in prop::collection::vec(line(), 0..12)) {
        exercise(&format!("FROM busybox AS s0\n{}\n", lines.join("\n")));
        exercise(&lines.join("\n"));
    }
}
