//! Classic BPF for seccomp: a tiny assembler with labels, and the layout of the filter.
//!
//! Layout: check `seccomp_data.arch` against each architecture (anything else is killed,
//! as libseccomp's bad-arch action), then per architecture a binary search on the syscall
//! number over intervals of numbers with the same outcome, whose leaves return the action
//! directly or jump to a block checking arguments.
//! Conditional jumps only ever skip one instruction; every longer jump is a `ja` (32-bit
//! offset), so the 8-bit `jt`/`jf` fields never overflow whatever the program's size.

use super::{ArchTable, ArgRule, Op, RET_KILL_PROCESS, Ret, Rule, Rules};

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset when true.
    pub jt: u8,
    /// Jump offset when false.
    pub jf: u8,
    /// Operand.
    pub k: u32,
}

pub(crate) const LD_W_ABS: u16 = 0x20;
pub(crate) const JMP_JA: u16 = 0x05;
pub(crate) const JMP_JEQ_K: u16 = 0x15;
pub(crate) const JMP_JGT_K: u16 = 0x25;
pub(crate) const JMP_JGE_K: u16 = 0x35;
pub(crate) const ALU_AND_K: u16 = 0x54;
pub(crate) const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARGS: u32 = 16;

#[derive(Debug, Clone, Copy)]
enum Ins {
    Raw(SockFilter),
    Ja(usize),
    Label(usize),
}

#[derive(Debug, Default)]
struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn raw(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.ins.push(Ins::Raw(SockFilter { code, jt, jf, k }));
    }
    fn ld(&mut self, off: u32) {
        self.raw(LD_W_ABS, 0, 0, off);
    }
    fn ret(&mut self, r: Ret) {
        self.raw(RET_K, 0, 0, r.0);
    }
    fn ja(&mut self, l: usize) {
        self.ins.push(Ins::Ja(l));
    }
    fn place(&mut self, l: usize) {
        self.ins.push(Ins::Label(l));
    }
    /// Resolves labels into `ja` offsets.
    fn finish(self) -> Vec<SockFilter> {
        let mut at = vec![0usize; self.labels];
        let mut pos = 0;
        for i in &self.ins {
            match i {
                Ins::Label(l) => at[*l] = pos,
                _ => pos += 1,
            }
        }
        let mut out = Vec::with_capacity(pos);
        for i in self.ins {
            match i {
                Ins::Raw(f) => out.push(f),
                Ins::Ja(l) => {
                    let k = at[l] - (out.len() + 1);
                    out.push(SockFilter {
                        code: JMP_JA,
                        jt: 0,
                        jf: 0,
                        k: k as u32,
                    });
                }
                Ins::Label(_) => {}
            }
        }
        out
    }
}

/// What a leaf of the search does for the syscall numbers of its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Ret(Ret),
    Block(usize),
}

/// A binary search over intervals `(first number, leaf)` that cover every number from 0 up
/// (each interval runs to the next one's start): internal nodes cost a `jge` and a `ja`,
/// leaves one instruction, and a run of consecutive syscalls with the same action (most of
/// docker's allow list) is one interval.
fn tree(a: &mut Asm, intervals: &[(u32, Leaf)]) {
    if let [(_, leaf)] = intervals {
        match leaf {
            Leaf::Ret(r) => a.ret(*r),
            Leaf::Block(l) => a.ja(*l),
        }
        return;
    }
    let mid = intervals.len() / 2;
    let right = a.label();
    a.raw(JMP_JGE_K, 0, 1, intervals[mid].0);
    a.ja(right);
    tree(a, &intervals[..mid]);
    a.place(right);
    tree(a, &intervals[mid..]);
}

/// The intervals of [`tree`] for `leaves` (sorted by number), the gaps getting `default`,
/// neighbours with the same return merged.
fn intervals(leaves: &[(u32, Leaf)], default: Ret) -> Vec<(u32, Leaf)> {
    fn push(out: &mut Vec<(u32, Leaf)>, start: u32, leaf: Leaf) {
        match (out.last(), leaf) {
            (Some((_, Leaf::Ret(prev))), Leaf::Ret(r)) if *prev == r => {}
            _ => out.push((start, leaf)),
        }
    }
    let mut out = Vec::new();
    let mut next = 0u32;
    for (nr, leaf) in leaves {
        if *nr > next {
            push(&mut out, next, Leaf::Ret(default));
        }
        push(&mut out, *nr, *leaf);
        next = nr.saturating_add(1);
    }
    if out.is_empty() || next != u32::MAX {
        push(&mut out, next, Leaf::Ret(default));
    }
    out
}

/// Emits the check of one argument condition: falls through when it holds, jumps to
/// `fail` otherwise. On a 32-bit architecture only the low word is compared.
fn check(a: &mut Asm, c: &ArgRule, wide: bool, fail: usize) {
    let lo = ARGS + 8 * c.index;
    let hi = lo + 4;
    let (vh, vl) = ((c.value >> 32) as u32, c.value as u32);
    let ok = a.label();
    match c.op {
        Op::SCMP_CMP_EQ => {
            if wide {
                a.ld(hi);
                a.raw(JMP_JEQ_K, 1, 0, vh);
                a.ja(fail);
            }
            a.ld(lo);
            a.raw(JMP_JEQ_K, 1, 0, vl);
            a.ja(fail);
        }
        Op::SCMP_CMP_NE => {
            if wide {
                a.ld(hi);
                a.raw(JMP_JEQ_K, 1, 0, vh);
                a.ja(ok);
            }
            a.ld(lo);
            a.raw(JMP_JEQ_K, 0, 1, vl);
            a.ja(fail);
        }
        Op::SCMP_CMP_MASKED_EQ => {
            let (wh, wl) = ((c.value_two >> 32) as u32, c.value_two as u32);
            if wide {
                a.ld(hi);
                a.raw(ALU_AND_K, 0, 0, vh);
                a.raw(JMP_JEQ_K, 1, 0, wh);
                a.ja(fail);
            }
            a.ld(lo);
            a.raw(ALU_AND_K, 0, 0, vl);
            a.raw(JMP_JEQ_K, 1, 0, wl);
            a.ja(fail);
        }
        Op::SCMP_CMP_GT | Op::SCMP_CMP_GE => {
            if wide {
                a.ld(hi);
                a.raw(JMP_JGT_K, 0, 1, vh);
                a.ja(ok);
                a.raw(JMP_JEQ_K, 1, 0, vh);
                a.ja(fail);
            }
            a.ld(lo);
            let code = if c.op == Op::SCMP_CMP_GT {
                JMP_JGT_K
            } else {
                JMP_JGE_K
            };
            a.raw(code, 1, 0, vl);
            a.ja(fail);
        }
        Op::SCMP_CMP_LT | Op::SCMP_CMP_LE => {
            if wide {
                a.ld(hi);
                a.raw(JMP_JGE_K, 1, 0, vh);
                a.ja(ok);
                a.raw(JMP_JEQ_K, 1, 0, vh);
                a.ja(fail);
            }
            a.ld(lo);
            let code = if c.op == Op::SCMP_CMP_LT {
                JMP_JGE_K
            } else {
                JMP_JGT_K
            };
            a.raw(code, 0, 1, vl);
            a.ja(fail);
        }
    }
    a.place(ok);
}

/// Rules of one syscall with argument conditions: the first rule whose conditions all hold
/// decides; none holding means the default.
fn block(a: &mut Asm, rules: &[Rule], wide: bool, default: Ret) {
    for r in rules {
        if r.args.is_empty() {
            a.ret(r.ret);
            return;
        }
        let next = a.label();
        for c in &r.args {
            check(a, c, wide, next);
        }
        a.ret(r.ret);
        a.place(next);
    }
    a.ret(default);
}

/// The whole filter for `arches` (the first is the native one).
pub(super) fn assemble(arches: &[(ArchTable, Rules)], default: Ret) -> Vec<SockFilter> {
    let mut a = Asm::default();
    let starts: Vec<usize> = arches.iter().map(|_| a.label()).collect();
    a.ld(ARCH);
    for ((arch, _), l) in arches.iter().zip(&starts) {
        a.raw(JMP_JEQ_K, 0, 1, arch.audit);
        a.ja(*l);
    }
    a.ret(Ret(RET_KILL_PROCESS));
    for ((arch, rules), l) in arches.iter().zip(&starts) {
        a.place(*l);
        a.ld(NR);
        if arch.limit != u32::MAX {
            a.raw(JMP_JGE_K, 0, 1, arch.limit);
            a.ret(default);
        }
        let mut blocks = Vec::new();
        let leaves: Vec<(u32, Leaf)> = rules
            .iter()
            .map(|(nr, rs)| match rs.first() {
                Some(r) if r.args.is_empty() => (*nr, Leaf::Ret(r.ret)),
                _ => {
                    let l = a.label();
                    blocks.push((l, rs));
                    (*nr, Leaf::Block(l))
                }
            })
            .collect();
        tree(&mut a, &intervals(&leaves, default));
        for (l, rs) in blocks {
            a.place(l);
            block(&mut a, rs, arch.wide, default);
        }
    }
    a.finish()
}
