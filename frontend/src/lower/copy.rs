//! COPY and ADD: sources from the context, a stage, an image or a URL, and heredoc files.

use super::values::{is_url, resolve_dest, valid_chmod};
use super::{Lowerer, StageCtx, step_name};
use crate::error::{Error, ErrorKind};
use crate::instructions::{CopyInstr, Instruction};
use cache::oci::Digest;
use graph::{CopyAction, CopySource, FileAction, FileOp, HistoryStep, InlineFile, Op};

impl Lowerer<'_> {
    pub(super) fn copy(
        &mut self,
        st: &mut StageCtx,
        instr: &Instruction,
        c: &CopyInstr,
    ) -> Result<(), Error> {
        let span = instr.span;
        let kw = if c.add { "ADD" } else { "COPY" };
        // Heredoc sources: an unquoted delimiter expands ARGs and ENV in the body as BuildKit's
        // ExpandRaw does (escape character `\` whatever `# escape=` says, quotes kept).
        let mut inline = Vec::new();
        for doc in &c.inline {
            let data = if doc.expand {
                let lex = crate::shell::Lex {
                    skip_process_quotes: true,
                    ..crate::shell::Lex::new('\\')
                };
                let env = self.stage_env(st);
                super::expand(&lex, &doc.data, &env, span).map_err(|e| self.err(e))?
            } else {
                doc.data.clone()
            };
            inline.push((doc.name.clone(), data));
        }
        let mut sources = Vec::new();
        for s in &c.sources {
            sources.push(self.x(st, &s.value, s.span)?);
        }
        let dest_raw = self.x(st, &c.dest.value, c.dest.span)?;
        let dest = resolve_dest(&dest_raw, &st.cwd());
        let from = match &c.from {
            Some(f) => {
                // BuildKit never expands `--from` (the stage graph is fixed before any stage
                // runs): a value that expansion would change is an error.
                self.no_expansion(&f.value, f.span, "from").map_err(|e| {
                    self.err(e.with_hint(
                        "define a new stage with FROM using ARG from global scope as a workaround",
                    ))
                })?;
                Some(self.resolve_from(st, &f.value, f.span, kw)?)
            }
            None => None,
        };
        let chown = match &c.chown {
            Some(f) => Some(self.x(st, &f.value, f.span)?),
            None => None,
        };
        let chmod = match &c.chmod {
            Some(f) => {
                let v = self.x(st, &f.value, f.span)?;
                if !valid_chmod(&v) {
                    return Err(self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "chmod".into(),
                            value: v,
                            reason: "expected octal like 0755 or symbolic like u+x".into(),
                        },
                        Some(f.span),
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let mut exclude = Vec::new();
        for e in &c.exclude {
            exclude.push(self.x(st, &e.value, e.span)?);
        }
        let git_sources = c.add && sources.iter().any(|s| graph::git::is_git_url(s));
        let checksum_raw = match &c.checksum {
            Some(f) => Some(self.x(st, &f.value, f.span)?),
            None => None,
        };
        // For a git source `--checksum` is a commit id (BuildKit); for http(s) a digest.
        let checksum = match (&c.checksum, &checksum_raw) {
            (Some(f), Some(v)) if !git_sources => Some(v.parse::<Digest>().map_err(|_| {
                self.err(Error::new(
                    ErrorKind::BadFlagValue {
                        flag: "checksum".into(),
                        value: v.clone(),
                        reason: "expected sha256:<64 hex digits>".into(),
                    },
                    Some(f.span),
                ))
            })?),
            _ => None,
        };
        let base = CopyAction {
            from: from.clone().unwrap_or(CopySource::Context),
            sources: Vec::new(),
            dest: dest.clone(),
            chown,
            chmod,
            exclude,
            parents: c.parents,
            link: c.link,
            unpack_archives: false,
            instruction: if c.add { "ADD" } else { "COPY" },
        };
        let mut actions = Vec::new();
        let mut local = Vec::new();
        for s in &sources {
            if c.add && graph::git::is_git_url(s) {
                let mut g = graph::git::parse_url(s, c.keep_git_dir).map_err(|e| {
                    self.err(Error::new(
                        ErrorKind::BadFlagValue {
                            flag: "source".into(),
                            value: s.clone(),
                            reason: e.to_string(),
                        },
                        Some(span),
                    ))
                })?;
                if let Some(v) = &checksum_raw {
                    let hex =
                        !v.is_empty() && v.len() <= 40 && v.bytes().all(|b| b.is_ascii_hexdigit());
                    if !hex {
                        return Err(self.err(Error::new(
                            ErrorKind::BadFlagValue {
                                flag: "checksum".into(),
                                value: v.clone(),
                                reason: "a git source's checksum is a commit id (hex)".into(),
                            },
                            c.checksum.as_ref().map(|f| f.span),
                        )));
                    }
                    g.checksum = Some(v.clone());
                }
                actions.push(FileAction::Copy(CopyAction {
                    from: CopySource::Git(Box::new(g)),
                    sources: vec![s.clone()],
                    unpack_archives: false,
                    ..base.clone()
                }));
            } else if c.add && is_url(s) {
                actions.push(FileAction::Copy(CopyAction {
                    from: CopySource::Url {
                        url: s.clone(),
                        checksum: checksum.clone(),
                    },
                    sources: vec![s.clone()],
                    // BuildKit extracts remote archives only with --unpack=true.
                    unpack_archives: c.unpack == Some(true),
                    ..base.clone()
                }));
            } else {
                local.push(s.clone());
            }
        }
        if checksum_raw.is_some() && actions.is_empty() {
            return Err(self.err(Error::new(
                ErrorKind::BadFlagValue {
                    flag: "checksum".into(),
                    value: c
                        .checksum
                        .as_ref()
                        .map(|f| f.value.clone())
                        .unwrap_or_default(),
                    reason: "only valid for http(s) and git sources".into(),
                },
                c.checksum.as_ref().map(|f| f.span),
            )));
        }
        let link = base.link;
        let (chown, chmod) = (base.chown.clone(), base.chmod.clone());
        if !local.is_empty() {
            actions.push(FileAction::Copy(CopyAction {
                sources: local,
                // ADD extracts local archives (detected by content) unless --unpack=false;
                // COPY never does.
                unpack_archives: c.add && c.unpack != Some(false),
                ..base
            }));
        }
        // After the other sources, one copy per heredoc, as BuildKit orders them. An inline
        // file is never extracted, even by ADD.
        for (name, data) in &inline {
            actions.push(FileAction::Inline(InlineFile {
                name: name.clone(),
                data: data.clone().into_bytes(),
                dest: dest.clone(),
                chown: chown.clone(),
                chmod: chmod.clone(),
                link,
                instruction: kw,
            }));
        }
        st.step += 1;
        let name = step_name(&st.label, st.step, st.total, &instr.original);
        let n = self.push(
            Op::File(FileOp {
                root: st.node,
                actions,
            }),
            name,
            Some(span),
            instr.original.clone(),
        );
        st.node = n;
        // BuildKit's history line names --parents, --chown and --chmod (expanded), then the
        // sources and the destination as written.
        let mut created = kw.to_owned();
        if c.parents {
            created.push_str(" --parents");
        }
        if let Some(v) = &chown {
            created.push_str(" --chown=");
            created.push_str(v);
        }
        if let Some(v) = &chmod {
            created.push_str(" --chmod=");
            created.push_str(v);
        }
        for s in &sources {
            created.push(' ');
            created.push_str(s);
        }
        for (name, _) in &inline {
            created.push_str(" <<");
            created.push_str(name);
        }
        created.push(' ');
        created.push_str(&dest_raw);
        created.push_str(" # buildkit");
        st.history.push(HistoryStep {
            created_by: created,
            layer: Some(n),
        });
        Ok(())
    }
}
