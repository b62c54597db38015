use super::bpf::*;
use super::*;

/// Runs a classic BPF program on a `seccomp_data` (nr, arch, args) the way the kernel does.
fn run(prog: &[SockFilter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = Vec::new();
    data.extend_from_slice(&nr.to_le_bytes());
    data.extend_from_slice(&arch.to_le_bytes());
    data.extend_from_slice(&0u64.to_le_bytes());
    for a in args {
        data.extend_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            LD_W_ABS => {
                let o = i.k as usize;
                acc = u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
            }
            ALU_AND_K => acc &= i.k,
            RET_K => return i.k,
            JMP_JA => pc += i.k as usize,
            JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                let t = match i.code {
                    JMP_JEQ_K => acc == i.k,
                    JMP_JGT_K => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += if t { i.jt } else { i.jf } as usize;
            }
            c => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn docker_caps() -> Vec<String> {
    capability_names(crate::init::default_capabilities())
}

fn default_filter(caps: Vec<String>) -> Vec<SockFilter> {
    let target = Target {
        arch: "amd64",
        caps,
        kernel: (6, 1),
    };
    compile(&Profile::docker_default(), &target)
        .expect("compiles")
        .program
}

const ALLOW: u32 = RET_ALLOW;
const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

fn x64(name: &str) -> u32 {
    lookup(tables::X86_64, name).expect(name)
}

#[test]
fn default_profile_allows_the_plain_list_and_refuses_the_rest() {
    let p = default_filter(docker_caps());
    for name in [
        "read",
        "mkdir",
        "execve",
        "mknod",
        "chroot",
        "ptrace",
        "arch_prctl",
    ] {
        assert_eq!(
            run(&p, x64(name), AUDIT_ARCH_X86_64, [0; 6]),
            ALLOW,
            "{name}"
        );
    }
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "perf_event_open",
        "unshare",
        "mount",
        "setns",
        "bpf",
        "reboot",
        "init_module",
        "open_by_handle_at",
        "kexec_load",
    ] {
        assert_eq!(
            run(&p, x64(name), AUDIT_ARCH_X86_64, [0; 6]),
            EPERM,
            "{name}"
        );
    }
    // Numbers past the table and x32 calls (bit 30) get the default action.
    assert_eq!(run(&p, 5000, AUDIT_ARCH_X86_64, [0; 6]), EPERM);
    assert_eq!(
        run(&p, 0x4000_0000 | x64("read"), AUDIT_ARCH_X86_64, [0; 6]),
        EPERM
    );
}

#[test]
fn clone_with_namespace_flags_and_clone3_are_refused_without_sys_admin() {
    let p = default_filter(docker_caps());
    let clone = x64("clone");
    let thread = (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::SIGCHLD) as u64;
    assert_eq!(
        run(&p, clone, AUDIT_ARCH_X86_64, [thread, 0, 0, 0, 0, 0]),
        ALLOW
    );
    for ns in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
        let flags = thread | ns as u64;
        assert_eq!(
            run(&p, clone, AUDIT_ARCH_X86_64, [flags, 0, 0, 0, 0, 0]),
            EPERM
        );
    }
    assert_eq!(
        run(&p, x64("clone3"), AUDIT_ARCH_X86_64, [0; 6]),
        RET_ERRNO | libc::ENOSYS as u32
    );
    // With CAP_SYS_ADMIN, docker's profile allows them (the capability-conditional groups).
    let mut caps = docker_caps();
    caps.push("CAP_SYS_ADMIN".into());
    let admin = default_filter(caps);
    let flags = thread | libc::CLONE_NEWUSER as u64;
    assert_eq!(
        run(&admin, clone, AUDIT_ARCH_X86_64, [flags, 0, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(run(&admin, x64("clone3"), AUDIT_ARCH_X86_64, [0; 6]), ALLOW);
    assert_eq!(run(&admin, x64("mount"), AUDIT_ARCH_X86_64, [0; 6]), ALLOW);
}

#[test]
fn personality_and_socket_follow_the_argument_rules() {
    let p = default_filter(docker_caps());
    let pers = x64("personality");
    for ok in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        assert_eq!(run(&p, pers, AUDIT_ARCH_X86_64, [ok, 0, 0, 0, 0, 0]), ALLOW);
    }
    for bad in [1u64, 0x0040_0000, 0x1_0000_0000] {
        assert_eq!(
            run(&p, pers, AUDIT_ARCH_X86_64, [bad, 0, 0, 0, 0, 0]),
            EPERM
        );
    }
    let socket = x64("socket");
    assert_eq!(
        run(&p, socket, AUDIT_ARCH_X86_64, [2, 1, 0, 0, 0, 0]),
        ALLOW
    );
    assert_eq!(
        run(&p, socket, AUDIT_ARCH_X86_64, [40, 1, 0, 0, 0, 0]),
        EPERM
    );
    // The high word counts too: 40 + 2^32 is not AF_VSOCK.
    assert_eq!(
        run(&p, socket, AUDIT_ARCH_X86_64, [40 | 1 << 32, 1, 0, 0, 0, 0]),
        ALLOW
    );
}

#[test]
fn i386_calls_use_the_i386_table_and_unknown_arches_are_killed() {
    let p = default_filter(docker_caps());
    let x86 = |n: &str| lookup(tables::X86, n).expect(n);
    assert_eq!(run(&p, x86("_llseek"), AUDIT_ARCH_I386, [0; 6]), ALLOW);
    assert_eq!(run(&p, x86("socketcall"), AUDIT_ARCH_I386, [0; 6]), ALLOW);
    assert_eq!(run(&p, x86("keyctl"), AUDIT_ARCH_I386, [0; 6]), EPERM);
    assert_eq!(
        run(&p, x86("personality"), AUDIT_ARCH_I386, [8, 0, 0, 0, 0, 0]),
        ALLOW
    );
    // Numbers are per architecture: x86_64's keyctl (250) is i386's fadvise64.
    assert_eq!(x86("fadvise64"), x64("keyctl"));
    assert_eq!(run(&p, x64("keyctl"), AUDIT_ARCH_I386, [0; 6]), ALLOW);
    assert_eq!(run(&p, 0, AUDIT_ARCH_AARCH64, [0; 6]), RET_KILL_PROCESS);
}

#[test]
fn every_comparison_operator_matches_libseccomp_semantics() {
    type Cmp = fn(u64, u64) -> bool;
    let ops: [(Op, Cmp); 6] = [
        (Op::SCMP_CMP_EQ, |a, v| a == v),
        (Op::SCMP_CMP_NE, |a, v| a != v),
        (Op::SCMP_CMP_LT, |a, v| a < v),
        (Op::SCMP_CMP_LE, |a, v| a <= v),
        (Op::SCMP_CMP_GT, |a, v| a > v),
        (Op::SCMP_CMP_GE, |a, v| a >= v),
    ];
    let samples = [
        0u64,
        1,
        7,
        0xffff_ffff,
        0x1_0000_0000,
        0x1_0000_0007,
        u64::MAX,
    ];
    for (op, f) in ops {
        for v in samples {
            let profile = Profile {
                default_action: Action::SCMP_ACT_ERRNO,
                default_errno_ret: Some(99),
                arch_map: None,
                architectures: None,
                syscalls: Some(vec![SyscallRule {
                    names: Some(vec!["write".into()]),
                    name: None,
                    action: Action::SCMP_ACT_ALLOW,
                    errno_ret: None,
                    args: Some(vec![ArgRule {
                        index: 2,
                        value: v,
                        value_two: 0,
                        op,
                    }]),
                    includes: None,
                    excludes: None,
                    comment: None,
                }]),
            };
            let target = Target {
                arch: "amd64",
                caps: vec![],
                kernel: (6, 1),
            };
            let p = compile(&profile, &target).expect("compiles").program;
            for a in samples {
                let want = if f(a, v) { ALLOW } else { RET_ERRNO | 99 };
                let got = run(&p, x64("write"), AUDIT_ARCH_X86_64, [0, 0, a, 0, 0, 0]);
                assert_eq!(got, want, "{op:?} arg {a:#x} value {v:#x}");
            }
        }
    }
}

#[test]
fn custom_profiles_parse_docker_format_with_errno_and_masked_eq() {
    let json = br#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"name": "kill", "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 255, "valueTwo": 9, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["ptrace"], "action": "SCMP_ACT_KILL", "excludes": {"caps": ["CAP_CHOWN"]}}
        ]
    }"#;
    let profile = Profile::from_json(json).expect("parses");
    let target = Target::native(docker_caps(), "6.1.0-18-amd64").expect("x86_64");
    let p = compile(&profile, &target).expect("compiles").program;
    assert_eq!(
        run(&p, x64("mkdir"), AUDIT_ARCH_X86_64, [0; 6]),
        RET_ERRNO | 13
    );
    assert_eq!(run(&p, x64("rmdir"), AUDIT_ARCH_X86_64, [0; 6]), ALLOW);
    assert_eq!(
        run(&p, x64("kill"), AUDIT_ARCH_X86_64, [1, 0x109, 0, 0, 0, 0]),
        EPERM
    );
    assert_eq!(
        run(&p, x64("kill"), AUDIT_ARCH_X86_64, [1, 15, 0, 0, 0, 0]),
        ALLOW
    );
    // Excluded by a capability the process has: ptrace stays allowed.
    assert_eq!(run(&p, x64("ptrace"), AUDIT_ARCH_X86_64, [0; 6]), ALLOW);

    let bad = br#"{"defaultAction": "SCMP_ACT_SOMETHING"}"#;
    assert!(matches!(
        Profile::from_json(bad),
        Err(SeccompError::Json(_))
    ));
    let notify = br#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#;
    let e = compile(&Profile::from_json(notify).expect("parses"), &target).expect_err("notify");
    assert_eq!(
        e.to_string(),
        "seccomp action SCMP_ACT_NOTIFY is not supported"
    );
}

#[test]
fn min_kernel_gates_ptrace_like_docker() {
    let old = Target {
        arch: "amd64",
        caps: docker_caps(),
        kernel: (4, 4),
    };
    let p = compile(&Profile::docker_default(), &old)
        .expect("compiles")
        .program;
    assert_eq!(run(&p, x64("ptrace"), AUDIT_ARCH_X86_64, [0; 6]), EPERM);
    assert_eq!(parse_kernel("6.18.44-fc-v1252"), Some((6, 18)));
}

#[test]
fn default_filter_fits_the_kernel_limit() {
    let p = default_filter(docker_caps());
    // Runs of allowed numbers share one interval: far fewer than two per syscall.
    assert!(p.len() < 1000 && p.len() > 100, "{} instructions", p.len());
}

/// What the rules say for `nr` with `args`, evaluated directly (first matching rule wins).
fn reference(rules: &Rules, nr: u32, args: [u64; 6], wide: bool, default: Ret) -> u32 {
    let Some(rs) = rules.get(&nr) else {
        return default.0;
    };
    for r in rs {
        let holds = r.args.iter().all(|c| {
            let (a, v) = if wide {
                (args[c.index as usize], c.value)
            } else {
                (args[c.index as usize] as u32 as u64, c.value as u32 as u64)
            };
            match c.op {
                Op::SCMP_CMP_EQ => a == v,
                Op::SCMP_CMP_NE => a != v,
                Op::SCMP_CMP_LT => a < v,
                Op::SCMP_CMP_LE => a <= v,
                Op::SCMP_CMP_GT => a > v,
                Op::SCMP_CMP_GE => a >= v,
                Op::SCMP_CMP_MASKED_EQ => {
                    let want = if wide {
                        c.value_two
                    } else {
                        c.value_two as u32 as u64
                    };
                    a & v == want
                }
            }
        });
        if holds {
            return r.ret.0;
        }
    }
    default.0
}

#[test]
fn filter_agrees_with_the_rules_for_every_syscall_number() {
    let profile = Profile::docker_default();
    let p = default_filter(docker_caps());
    let default = Ret(EPERM);
    let target = Target {
        arch: "amd64",
        caps: docker_caps(),
        kernel: (6, 1),
    };
    for arch in arch_tables(target.arch).expect("amd64") {
        let mut rules = Rules::new();
        for entry in profile
            .syscalls
            .iter()
            .flatten()
            .filter(|e| applies(e, &target))
        {
            let r = ret(entry.action, entry.errno_ret, profile.default_errno_ret).expect("ret");
            for name in entry.names.iter().flatten() {
                if let Some(nr) = lookup(arch.table, name) {
                    rules.entry(nr).or_default().push(Rule {
                        args: entry.args.clone().unwrap_or_default(),
                        ret: r,
                    });
                }
            }
        }
        let samples = [
            [0u64; 6],
            [8, 0, 0, 0, 0, 0],
            [40, 1, 0, 0, 0, 0],
            [0x1000_0000 | 17, 0, 0, 0, 0, 0],
            [u64::MAX; 6],
        ];
        for nr in (0..1024).chain([0x3fff_ffff, u32::MAX]) {
            for args in samples {
                let want = if arch.limit != u32::MAX && nr >= arch.limit {
                    default.0
                } else {
                    reference(&rules, nr, args, arch.wide, default)
                };
                assert_eq!(
                    run(&p, nr, arch.audit, args),
                    want,
                    "arch {:#x} nr {nr}",
                    arch.audit
                );
            }
        }
    }
}
