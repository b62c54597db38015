//! `kiln import --change 'CMD ["sh"]'`: Dockerfile instructions applied to a config.

use crate::ast::parse_ast;
use crate::error::{Error, ErrorKind};
use crate::instructions::{Command, parse_instruction};
use crate::lower::parse_port_spec;
use crate::shell::Lex;
use cache::oci::{ContainerConfig, Empty};

fn lookup(config: &ContainerConfig, k: &str) -> Option<String> {
    config
        .env
        .iter()
        .rev()
        .find_map(|e| match e.split_once('=') {
            Some((key, v)) if key == k => Some(v.to_owned()),
            _ => None,
        })
}

fn shell_wrap(config: &ContainerConfig, args: &[String], shell_form: bool) -> Vec<String> {
    if !shell_form || args.is_empty() {
        return args.to_vec();
    }
    let mut v = if config.shell.is_empty() {
        vec!["/bin/sh".to_owned(), "-c".to_owned()]
    } else {
        config.shell.clone()
    };
    v.extend(args.iter().cloned());
    v
}

/// Applies `--change` instructions (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR,
/// VOLUME, STOPSIGNAL) in order. Variables expand against the config's ENV.
///
/// Fails on a syntax error or an instruction outside that list; the error's file name is
/// `--change` and its line is the change's position (from 1).
pub fn apply_changes(config: &mut ContainerConfig, changes: &[String]) -> Result<(), Error> {
    let lex = Lex::new('\\');
    let mut cmd_set = false;
    for (i, change) in changes.iter().enumerate() {
        let fail = |e: Error| {
            let mut e = e.with_source(change).with_file_name("--change");
            if let Some(s) = e.span() {
                e = Error::new(
                    e.kind().clone(),
                    Some(graph::Span {
                        line: i as u32 + 1,
                        column: s.column,
                    }),
                )
                .with_file_name("--change");
            }
            e
        };
        let tree = parse_ast(change).map_err(fail)?;
        for node in &tree.nodes {
            let instr = parse_instruction(node).map_err(fail)?;
            let span = Some(node.span);
            let x = |w: &str, c: &ContainerConfig| {
                lex.process_word(w, &|k| lookup(c, k)).map_err(|source| {
                    fail(Error::new(
                        ErrorKind::Expand {
                            word: w.to_owned(),
                            source,
                        },
                        span,
                    ))
                })
            };
            match &instr.command {
                Command::Cmd(c) => {
                    config.cmd = Some(shell_wrap(config, &c.args, c.shell_form));
                    cmd_set = true;
                }
                Command::Entrypoint(c) => {
                    let args = shell_wrap(config, &c.args, c.shell_form);
                    config.entrypoint = if args.is_empty() { None } else { Some(args) };
                    if !cmd_set {
                        config.cmd = None;
                    }
                }
                Command::Env(kvs) => {
                    let mut pairs = Vec::new();
                    for kv in kvs {
                        pairs.push((x(&kv.key, config)?, x(&kv.value, config)?));
                    }
                    for (k, v) in pairs {
                        let entry = format!("{k}={v}");
                        match config
                            .env
                            .iter_mut()
                            .find(|e| e.split_once('=').is_some_and(|(key, _)| key == k))
                        {
                            Some(e) => *e = entry,
                            None => config.env.push(entry),
                        }
                    }
                }
                Command::Expose(ports) => {
                    for p in ports {
                        let p = x(p, config)?;
                        for spec in parse_port_spec(&p).map_err(|k| fail(Error::new(k, span)))? {
                            config.exposed_ports.insert(spec, Empty {});
                        }
                    }
                }
                Command::Label(kvs) => {
                    for kv in kvs {
                        let (k, v) = (x(&kv.key, config)?, x(&kv.value, config)?);
                        config.labels.insert(k, v);
                    }
                }
                Command::User(u) => config.user = x(u, config)?,
                Command::Workdir(w) => {
                    let w = x(w, config)?;
                    let base = if config.working_dir.is_empty() {
                        "/"
                    } else {
                        config.working_dir.as_str()
                    };
                    let joined = if w.starts_with('/') {
                        w
                    } else {
                        format!("{base}/{w}")
                    };
                    config.working_dir = crate::lower::clean_path(&joined);
                }
                Command::Volume(vs) => {
                    for v in vs {
                        let v = x(v, config)?;
                        config.volumes.insert(v, Empty {});
                    }
                }
                Command::StopSignal(s) => config.stop_signal = x(s, config)?,
                other => {
                    return Err(fail(Error::new(
                        ErrorKind::ChangeNotAllowed {
                            instruction: other.keyword().to_owned(),
                        },
                        span,
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_in_order() {
        let mut c = ContainerConfig::default();
        let changes: Vec<String> = [
            r#"CMD ["sh"]"#,
            "ENV A=1 B=$A",
            "EXPOSE 80 53/udp 9000-9001",
            "WORKDIR /app",
            "WORKDIR sub",
            "LABEL k=v",
            "USER nobody",
            "VOLUME /data",
            "STOPSIGNAL SIGINT",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        apply_changes(&mut c, &changes).expect("applies");
        assert_eq!(c.cmd, Some(vec!["sh".to_owned()]));
        assert_eq!(c.env, vec!["A=1", "B="]);
        assert_eq!(
            c.exposed_ports.keys().cloned().collect::<Vec<_>>(),
            vec!["53/udp", "80/tcp", "9000/tcp", "9001/tcp"]
        );
        assert_eq!(c.working_dir, "/app/sub");
        assert_eq!(c.user, "nobody");
        assert_eq!(c.stop_signal, "SIGINT");
    }

    #[test]
    fn entrypoint_shell_form_wraps_and_resets_cmd() {
        let mut c = ContainerConfig {
            cmd: Some(vec!["old".into()]),
            ..ContainerConfig::default()
        };
        apply_changes(&mut c, &["ENTRYPOINT run me".to_owned()]).expect("applies");
        assert_eq!(
            c.entrypoint,
            Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "run me".to_owned()
            ])
        );
        assert_eq!(c.cmd, None);
    }

    #[test]
    fn run_is_not_a_change() {
        let e = apply_changes(
            &mut ContainerConfig::default(),
            &["CMD x".to_owned(), "RUN make".to_owned()],
        )
        .expect_err("RUN rejected");
        assert!(
            e.to_string()
                .starts_with("--change:2:1: RUN is not supported by --change"),
            "{e}"
        );
    }
}
