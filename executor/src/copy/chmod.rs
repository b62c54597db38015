//! `--chmod` values: octal (`0755`, `4755`) or symbolic (`u+x,go-w`, `a=rX`), as chmod(1)
//! reads them (BuildKit accepts both since Dockerfile 1.14).

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// An absolute mode (setuid/setgid/sticky included when given).
    Octal(u32),
    /// Clauses applied in order to each entry's own mode.
    Symbolic(Vec<Clause>),
}

/// One `who op perms` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    who: Vec<char>,
    op: char,
    perms: Vec<char>,
}

impl Chmod {
    /// Parses an octal or symbolic mode; `None` when it is neither.
    pub fn parse(spec: &str) -> Option<Chmod> {
        if !spec.is_empty() && spec.chars().all(|c| c.is_ascii_digit()) {
            return u32::from_str_radix(spec, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .map(Chmod::Octal);
        }
        let mut clauses = Vec::new();
        for part in spec.split(',') {
            let op_at = part.find(['+', '-', '='])?;
            let (who, rest) = part.split_at(op_at);
            if !who.chars().all(|c| "ugoa".contains(c)) {
                return None;
            }
            let mut chars = rest.chars();
            let op = chars.next()?;
            let perms: Vec<char> = chars.collect();
            if !perms.iter().all(|c| "rwxXst".contains(*c)) {
                return None;
            }
            let who: Vec<char> = if who.is_empty() || who.contains('a') {
                vec!['u', 'g', 'o']
            } else {
                who.chars().collect()
            };
            clauses.push(Clause { who, op, perms });
        }
        Some(Chmod::Symbolic(clauses))
    }

    /// The mode an entry with `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            let mut bits = 0;
            let mut all = 0;
            for w in &c.who {
                let shift = match w {
                    'u' => 6,
                    'g' => 3,
                    _ => 0,
                };
                all |= 0o7 << shift;
                all |= match w {
                    'u' => 0o4000,
                    'g' => 0o2000,
                    _ => 0o1000,
                };
                for p in &c.perms {
                    bits |= match p {
                        'r' => 0o4 << shift,
                        'w' => 0o2 << shift,
                        'x' => 0o1 << shift,
                        'X' if is_dir || mode & 0o111 != 0 => 0o1 << shift,
                        's' if *w == 'u' => 0o4000,
                        's' if *w == 'g' => 0o2000,
                        't' if *w == 'o' => 0o1000,
                        _ => 0,
                    };
                }
            }
            mode = match c.op {
                '+' => mode | bits,
                '-' => mode & !bits,
                _ => (mode & !all) | bits,
            };
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(spec: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(spec).expect(spec).apply(mode, is_dir)
    }

    #[test]
    fn octal_replaces_the_mode_and_keeps_special_bits() {
        assert_eq!(apply("755", 0o600, false), 0o755);
        assert_eq!(apply("4755", 0o600, false), 0o4755);
        assert_eq!(Chmod::parse("17777"), None);
        assert_eq!(Chmod::parse("8"), None);
    }

    #[test]
    fn symbolic_adds_removes_and_sets() {
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("a=r", 0o4755, false), 0o444);
        assert_eq!(apply("u=rwx,g=rx,o=", 0o000, false), 0o750);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("u+s,o+t", 0o755, true), 0o5755);
    }

    #[test]
    fn capital_x_only_for_dirs_and_executables() {
        assert_eq!(apply("a+X", 0o644, false), 0o644);
        assert_eq!(apply("a+X", 0o644, true), 0o755);
        assert_eq!(apply("a+X", 0o744, false), 0o755);
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in ["", "u", "z+x", "u+q", "u+x,"] {
            assert_eq!(Chmod::parse(bad), None, "{bad}");
        }
    }
}
