//! Per-instruction lowering: what each Dockerfile instruction does to the stage state.

use super::values::{
    clean_path, go_quote_list, looks_like_image, parse_port_spec, set_env, valid_signal,
};
use super::{ArgValue, DEFAULT_PATH, FromRef, Lowerer, PROXY_ARGS, StageCtx, step_name};
use crate::error::{Error, ErrorKind, suggest};
use crate::instructions::{ArgDef, CmdLine, Command, Instruction, KeyValue, RunInstr, Stage};
use crate::mounts;
use cache::oci::Empty;
use graph::{
    CopySource, ExecOp, FileAction, FileOp, HistoryStep, InlineFile, NetworkMode, NodeId, Op, Span,
};
use std::collections::BTreeSet;

impl Lowerer<'_> {
    pub(super) fn dispatch(
        &mut self,
        stage: &Stage,
        st: &mut StageCtx,
        instr: &Instruction,
    ) -> Result<(), Error> {
        let span = instr.span;
        match &instr.command {
            Command::Run(run) => self.run(st, instr, run)?,
            Command::Copy(c) => self.copy(st, instr, c)?,
            Command::Workdir(w) => {
                let p = self.x(st, w, span)?;
                let cwd = if p.starts_with('/') {
                    clean_path(&p)
                } else {
                    clean_path(&format!("{}/{p}", st.cwd()))
                };
                st.config.config.working_dir = cwd.clone();
                if cwd != "/" {
                    st.step += 1;
                    let name = step_name(&st.label, st.step, st.total, &instr.original);
                    let n = self.push(
                        Op::File(FileOp {
                            root: st.node,
                            actions: vec![FileAction::Mkdir {
                                path: cwd.clone(),
                                owner: st.config.config.user.clone(),
                            }],
                        }),
                        name,
                        Some(span),
                        instr.original.clone(),
                    );
                    st.node = n;
                    st.history.push(HistoryStep {
                        created_by: format!("WORKDIR {cwd}"),
                        layer: Some(n),
                    });
                } else {
                    st.history.push(HistoryStep {
                        created_by: format!("WORKDIR {cwd}"),
                        layer: None,
                    });
                }
            }
            Command::Env(kvs) => {
                // All pairs see the values from before this instruction.
                let mut pairs = Vec::new();
                for kv in kvs {
                    pairs.push((
                        self.x(st, &kv.key, kv.span)?,
                        self.x(st, &kv.value, kv.span)?,
                    ));
                }
                let mut msg = "ENV".to_owned();
                for (k, v) in pairs {
                    msg.push_str(&format!(" {k}={v}"));
                    set_env(&mut st.config.config.env, &k, &v);
                }
                st.meta(msg);
            }
            Command::Label(kvs) => {
                let mut msg = "LABEL".to_owned();
                for KeyValue {
                    key, value, span, ..
                } in kvs
                {
                    let (k, v) = (self.x(st, key, *span)?, self.x(st, value, *span)?);
                    msg.push_str(&format!(" {k}={v}"));
                    st.config.config.labels.insert(k, v);
                }
                st.meta(msg);
            }
            Command::Arg(defs) => self.arg(st, defs)?,
            Command::User(u) => {
                let u = self.x(st, u, span)?;
                st.config.config.user = u.clone();
                st.meta(format!("USER {u}"));
            }
            Command::Expose(ports) => {
                let mut all = BTreeSet::new();
                for p in ports {
                    for w in self.xs(st, p, span)? {
                        for spec in
                            parse_port_spec(&w).map_err(|e| self.err(Error::new(e, Some(span))))?
                        {
                            all.insert(spec);
                        }
                    }
                }
                let shown: Vec<String> = all.iter().cloned().collect();
                for p in all {
                    st.config.config.exposed_ports.insert(p, Empty {});
                }
                // Current BuildKit prints the port list (`EXPOSE [1234/udp 2375/tcp]`, sorted
                // in its testExportedHistory); older versions printed a Go map.
                st.meta(format!("EXPOSE [{}]", shown.join(" ")));
            }
            Command::Volume(vols) => {
                let mut list = Vec::new();
                for v in vols {
                    let v = self.x(st, v, span)?;
                    if v.trim().is_empty() {
                        return Err(self.err(Error::new(
                            ErrorKind::BlankName {
                                instruction: "VOLUME".into(),
                            },
                            Some(span),
                        )));
                    }
                    st.config.config.volumes.insert(v.clone(), Empty {});
                    list.push(v);
                }
                st.meta(format!("VOLUME [{}]", list.join(" ")));
            }
            Command::StopSignal(s) => {
                let s = self.x(st, s, span)?;
                if !valid_signal(&s) {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "STOPSIGNAL".into(),
                            value: s,
                            reason: "not a signal name or number".into(),
                        },
                        Some(span),
                    )));
                }
                st.config.config.stop_signal = s.clone();
                st.meta(format!("STOPSIGNAL {s}"));
            }
            Command::Cmd(c) => {
                let args = self.command_args(st, c);
                st.config.config.cmd = Some(args.clone());
                st.cmd_set = true;
                st.meta(format!("CMD {}", go_quote_list(&args)));
            }
            Command::Entrypoint(c) => {
                let args = self.command_args(st, c);
                st.config.config.entrypoint = if args.is_empty() && !c.shell_form {
                    None
                } else {
                    Some(args.clone())
                };
                // An ENTRYPOINT resets a CMD inherited from the base (not one set in this stage).
                if !st.cmd_set {
                    st.config.config.cmd = None;
                }
                st.meta(format!("ENTRYPOINT {}", go_quote_list(&args)));
            }
            Command::Shell(args) => {
                st.config.config.shell = args.clone();
                st.meta(format!("SHELL [{}]", args.join(" ")));
            }
            Command::Healthcheck(h) => {
                st.config.config.healthcheck = Some(h.health.clone());
                st.meta(format!("HEALTHCHECK {}", go_quote_list(&h.health.test)));
            }
            Command::Onbuild(o) => {
                st.config.config.on_build.push(o.expression.clone());
                st.meta(format!("ONBUILD {}", o.expression));
            }
            Command::Maintainer(m) => {
                st.config.author = Some(m.clone());
                st.meta(format!("MAINTAINER {m}"));
            }
        }
        let _ = stage;
        Ok(())
    }

    fn arg(&mut self, st: &mut StageCtx, defs: &[ArgDef]) -> Result<(), Error> {
        let mut shown = Vec::new();
        for d in defs {
            let name = self.x(st, &d.name, d.span)?;
            let value = match self.opts.build_args.get(&name) {
                Some(v) => Some(v.clone()),
                None => match &d.default {
                    Some(def) => Some(self.x(st, def, d.span)?),
                    // A global ARG re-declared without a value takes the global value; the
                    // platform ARGs take theirs.
                    None => self
                        .meta
                        .iter()
                        .rev()
                        .find(|a| a.name == name)
                        .and_then(|a| a.value.clone())
                        .or_else(|| self.platform_arg(&name))
                        .or_else(|| self.target_stage_arg(&name)),
                },
            };
            if !PROXY_ARGS.contains(&name.as_str()) {
                shown.push(match &value {
                    Some(v) => format!("{name}={v}"),
                    None => name.clone(),
                });
            }
            // A re-declared ARG keeps its place (BuildKit's history: `ARG foo=bar`, `ARG
            // bar=123`, `ARG foo=bar2` give `RUN |2 foo=bar2 bar=123 ...`).
            match st.args.iter_mut().find(|a| a.name == name) {
                Some(a) => a.value = value,
                None => st.args.push(ArgValue { name, value }),
            }
        }
        if !shown.is_empty() {
            st.meta(format!("ARG {}", shown.join(" ")));
        }
        Ok(())
    }

    /// CMD/ENTRYPOINT argv: exec form as is, shell form wrapped in the stage's SHELL.
    fn command_args(&self, st: &StageCtx, c: &CmdLine) -> Vec<String> {
        if c.shell_form && !c.args.is_empty() {
            let mut v = st.shell();
            v.extend(c.args.iter().cloned());
            v
        } else {
            c.args.clone()
        }
    }

    fn run(&mut self, st: &mut StageCtx, instr: &Instruction, run: &RunInstr) -> Result<(), Error> {
        let span = instr.span;
        let mut args = run.cmd.args.clone();
        let mut script_mount = None;
        if !run.cmd.heredocs.is_empty() {
            // BuildKit: a lone `<<EOF` runs the body; one that starts with `#!` is written to
            // a 0755 file `EOF` in a read-only mount at /dev/pipes/ and the command becomes
            // that file's path (still wrapped in the shell for the shell form, as BuildKit
            // does: `/bin/sh -c /dev/pipes/EOF` execs it, and the kernel honours the `#!`);
            // any other lone heredoc is the shell's command string. Otherwise the heredocs
            // are appended for the shell to handle. Neither body is expanded by kiln.
            let first = args.first().cloned().unwrap_or_default();
            let lone = crate::ast::parse_heredoc(&first).ok().flatten();
            args = match lone {
                Some(_) if run.cmd.heredocs.len() == 1 => {
                    let doc = &run.cmd.heredocs[0];
                    let body = doc.chomped_content();
                    if doc.content.starts_with("#!") {
                        let n = self.inline_script(st, instr, &doc.name, body);
                        script_mount = Some(graph::Mount {
                            target: "/dev/pipes".to_owned(),
                            kind: graph::MountKind::Bind {
                                from: CopySource::Node(n),
                                source: "/".to_owned(),
                            },
                            readonly: true,
                        });
                        vec![format!("/dev/pipes/{}", doc.name)]
                    } else {
                        vec![body]
                    }
                }
                _ => {
                    let mut full = first;
                    for h in &run.cmd.heredocs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    vec![full]
                }
            };
        }
        let shown_args = if run.cmd.shell_form {
            let mut v = st.shell();
            v.extend(args);
            v
        } else {
            args
        };
        let network = match &run.network {
            None => NetworkMode::Default,
            Some(n) => match self.x(st, &n.value, n.span)?.as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                other => {
                    return Err(self.err(
                        Error::new(
                            ErrorKind::BadFlagValue {
                                flag: "network".into(),
                                value: other.to_owned(),
                                reason: "expected default, none or host".into(),
                            },
                            Some(n.span),
                        )
                        .with_hint("use --network=none, --network=host or --network=default"),
                    ));
                }
            },
        };
        // BuildKit's values; whether an insecure step may run is the builder's `--allow
        // security.insecure` (checked on the graph, as BuildKit checks entitlements).
        let insecure = match &run.security {
            None => false,
            Some(s) => match self.x(st, &s.value, s.span)?.as_str() {
                "sandbox" => false,
                "insecure" => true,
                v => {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "security".into(),
                            value: v.to_owned(),
                            reason: "expected sandbox or insecure".into(),
                        },
                        Some(s.span),
                    )));
                }
            },
        };
        let mut mounts_out = Vec::new();
        let mut ssh_count = 0;
        for m in &run.mounts {
            // BuildKit expands the other mount options but not `from`.
            for field in m.value.split(',') {
                if let Some((k, _)) = field.split_once('=')
                    && k.trim().eq_ignore_ascii_case("from")
                {
                    self.no_expansion(field, m.span, "mount").map_err(|e| {
                        self.err(e.with_hint("define an alias stage (FROM ... AS name) instead"))
                    })?;
                }
            }
            let spec = self.x(st, &m.value, m.span)?;
            let mut parsed = mounts::parse_mount(&spec, &st.cwd())
                .map_err(|e| self.err(Error::new(e, Some(m.span))))?;
            // BuildKit numbers default ssh targets: /run/buildkit/ssh_agent.0, .1, ...
            if parsed.kind == mounts::MountType::Ssh {
                if parsed.target == mounts::SSH_DEFAULT_TARGET {
                    parsed.target = format!("/run/buildkit/ssh_agent.{ssh_count}");
                }
                ssh_count += 1;
            }
            let from = match &parsed.from {
                Some(f) => Some(self.resolve_from(st, f, m.span, "RUN --mount")?),
                None => None,
            };
            mounts_out.push(parsed.into_mount(from));
        }
        mounts_out.extend(script_mount);
        // Exec env: image ENV, then the ARGs in scope that ENV does not shadow (BuildKit:
        // ENV wins over ARG); proxies go apart so they stay out of the cache key.
        let mut env = st.config.config.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let mut proxy_env: Vec<String> = Vec::new();
        let mut hist_args = Vec::new();
        for a in &st.args {
            let Some(v) = &a.value else { continue };
            if PROXY_ARGS.contains(&a.name.as_str()) {
                proxy_env.push(format!("{}={v}", a.name));
                continue;
            }
            let shadowed = st
                .config
                .config
                .env
                .iter()
                .any(|e| e.split_once('=').is_some_and(|(k, _)| k == a.name));
            if !shadowed {
                env.push(format!("{}={v}", a.name));
            }
            let shown = st.lookup(&a.name).unwrap_or_else(|| v.clone());
            hist_args.push(format!("{}={shown}", a.name));
        }
        for p in PROXY_ARGS {
            if let Some(v) = self.opts.build_args.get(*p)
                && !proxy_env.iter().any(|e| e.starts_with(&format!("{p}=")))
            {
                proxy_env.push(format!("{p}={v}"));
            }
        }
        st.step += 1;
        let name = step_name(&st.label, st.step, st.total, &instr.original);
        let n = self.push(
            Op::Exec(ExecOp {
                root: st.node,
                args: shown_args.clone(),
                env,
                proxy_env: both_spellings(&proxy_env),
                cwd: st.cwd(),
                user: st.config.config.user.clone(),
                network,
                mounts: mounts_out,
                insecure,
            }),
            name,
            Some(span),
            instr.original.clone(),
        );
        st.node = n;
        let mut created = "RUN ".to_owned();
        if !hist_args.is_empty() {
            created.push_str(&format!("|{} {} ", hist_args.len(), hist_args.join(" ")));
        }
        created.push_str(&shown_args.join(" "));
        created.push_str(" # buildkit");
        st.history.push(HistoryStep {
            created_by: created,
            layer: Some(n),
        });
        Ok(())
    }

    /// The node holding a `RUN <<EOF` script that starts with `#!`: `/<name>`, mode 0755, on
    /// scratch (BuildKit's "preparing inline document"), mounted by the RUN at /dev/pipes/.
    fn inline_script(
        &mut self,
        st: &StageCtx,
        instr: &Instruction,
        name: &str,
        body: String,
    ) -> NodeId {
        let root = self.scratch_node();
        let label = match &st.label {
            Some(l) => format!("[{l} internal]"),
            None => "[internal]".to_owned(),
        };
        self.push(
            Op::File(FileOp {
                root,
                actions: vec![FileAction::Inline(InlineFile {
                    name: name.to_owned(),
                    data: body.into_bytes(),
                    dest: "/".to_owned(),
                    chown: None,
                    chmod: Some("0755".to_owned()),
                    link: false,
                    instruction: "RUN",
                })],
            }),
            (
                format!(
                    "{label} preparing inline document for line {}",
                    instr.span.line
                ),
                None,
            ),
            Some(instr.span),
            instr.original.clone(),
        )
    }

    /// Fails when word expansion would change `value` (BuildKit compares the word before and
    /// after expanding it with no variables set).
    pub(super) fn no_expansion(&self, value: &str, span: Span, flag: &str) -> Result<(), Error> {
        let expanded = self.lex.process_word(value, &|_: &str| None);
        if expanded.as_deref() == Ok(value) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::BadFlagValue {
                flag: flag.to_owned(),
                value: value.to_owned(),
                reason: "variable expansion is not supported here".to_owned(),
            },
            Some(span),
        ))
    }

    /// Resolves `--from` / `from=`: a stage name, a stage index, or an image.
    pub(super) fn resolve_from(
        &mut self,
        st: &StageCtx,
        from: &str,
        span: Span,
        instr: &str,
    ) -> Result<CopySource, Error> {
        let r = self.classify_from(st, from, span, instr)?;
        Ok(match r {
            FromRef::Stage(i) => CopySource::Node(self.stage(i)?.node),
            FromRef::Image(reference) if reference.is_empty() => CopySource::Context,
            FromRef::Image(reference) => {
                let name = (format!("[internal] load {reference}"), None);
                CopySource::Node(self.image_node(&reference, span, name, Some(instr))?.0)
            }
        })
    }

    fn classify_from(
        &self,
        st: &StageCtx,
        from: &str,
        span: Span,
        instr: &str,
    ) -> Result<FromRef, Error> {
        if let Some(i) = self.find_stage(from) {
            // BuildKit: "cannot copy from stage X, it needs to be defined before current stage".
            if i >= st.index {
                return Err(self.err(
                    Error::new(
                        ErrorKind::StageNotYetDefined {
                            name: from.to_ascii_lowercase(),
                        },
                        Some(span),
                    )
                    .with_hint("move that stage above this one: only earlier stages can be read"),
                ));
            }
            return Ok(FromRef::Stage(i));
        }
        if let Ok(index) = from.parse::<usize>() {
            let current = st.index;
            if index >= current {
                return Err(self.err(
                    Error::new(
                        ErrorKind::BadStageIndex {
                            instruction: "--from".into(),
                            index,
                            count: current,
                        },
                        Some(span),
                    )
                    .with_hint(self.stages_hint()),
                ));
            }
            return Ok(FromRef::Stage(index));
        }
        if from.is_empty() {
            return Err(self.err(Error::new(
                ErrorKind::BlankBaseName {
                    name: from.to_owned(),
                },
                Some(span),
            )));
        }
        if self.opts.named_context(from).is_some() {
            return Ok(FromRef::Image(from.to_owned()));
        }
        let names = self.stage_names();
        let typo = suggest(from, names.iter().map(String::as_str));
        // A bare name close to a stage name is a typo, not an image (`--from=biulder`).
        if looks_like_image(from) && (typo.is_none() || from.contains(['/', ':', '@'])) {
            return Ok(FromRef::Image(from.to_owned()));
        }
        let hint = match typo {
            Some(t) => format!("did you mean stage `{t}`? {}", self.stages_hint()),
            None => self.stages_hint(),
        };
        Err(self.err(
            Error::new(
                ErrorKind::UnknownStage {
                    instruction: instr.to_owned(),
                    name: from.to_owned(),
                },
                Some(span),
            )
            .with_hint(hint),
        ))
    }

    pub(super) fn stages_hint(&self) -> String {
        let names = self.stage_names();
        let mut s = format!(
            "stages are numbered 0..{}",
            self.df.stages.len().saturating_sub(1)
        );
        if !names.is_empty() {
            s.push_str(&format!("; the named stages are: {}", names.join(", ")));
        }
        s
    }
}

/// BuildKit hands each proxy to RUN in both spellings (`HTTP_PROXY` and `http_proxy`),
/// whichever one was given (its `proxyEnvFromBuildArgs` matches names case-insensitively).
fn both_spellings(given: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for upper in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ] {
        let value = given.iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| k.eq_ignore_ascii_case(upper))
                .map(|(_, v)| v.to_owned())
        });
        if let Some(v) = value {
            out.push(format!("{upper}={v}"));
            out.push(format!("{}={v}", upper.to_ascii_lowercase()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::both_spellings;

    #[test]
    fn proxies_reach_run_in_both_spellings() {
        let got = both_spellings(&["http_proxy=hp".into(), "NO_PROXY=np".into()]);
        assert_eq!(
            got,
            [
                "HTTP_PROXY=hp",
                "http_proxy=hp",
                "NO_PROXY=np",
                "no_proxy=np"
            ]
        );
    }
}
