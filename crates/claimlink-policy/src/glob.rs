//! Matching with `*` (any run of characters, `/` included) and `?` (exactly one character),
//! the wildcards of IAM-style resource ARNs.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// Characters that must appear as they are (variable values end up here too: a `*` in a
    /// client id is not a wildcard).
    Literal(String),
    /// `*`.
    Star,
    /// `?`.
    One,
}

/// A pattern of tokens, with adjacent literals merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
}

impl Pattern {
    pub(crate) fn push(&mut self, token: Token) {
        match (self.tokens.last_mut(), token) {
            (Some(Token::Literal(prev)), Token::Literal(s)) => prev.push_str(&s),
            (Some(Token::Star), Token::Star) => {}
            (_, Token::Literal(s)) if s.is_empty() => {}
            (_, t) => self.tokens.push(t),
        }
    }

    /// Whether `prefix` followed by `name` matches, without building the concatenation (this
    /// runs for every packet).
    pub(crate) fn matches(&self, prefix: &str, name: &str) -> bool {
        matches_tokens(&self.tokens, &Text { a: prefix.as_bytes(), b: name.as_bytes() })
    }
}

/// Two strings read as one.
struct Text<'a> {
    a: &'a [u8],
    b: &'a [u8],
}

impl Text<'_> {
    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }

    fn at(&self, i: usize) -> u8 {
        if i < self.a.len() { self.a[i] } else { self.b[i - self.a.len()] }
    }

    fn starts_with_at(&self, i: usize, lit: &[u8]) -> bool {
        if i + lit.len() > self.len() {
            return false;
        }
        let a = self.a.len();
        if i >= a {
            self.b[i - a..].starts_with(lit)
        } else if i + lit.len() <= a {
            self.a[i..].starts_with(lit)
        } else {
            let (head, tail) = lit.split_at(a - i);
            self.a[i..] == *head && self.b.starts_with(tail)
        }
    }

    /// Bytes of the character starting at `i` (both halves are whole UTF-8 strings).
    fn char_len(&self, i: usize) -> usize {
        match self.at(i) {
            b if b < 0x80 => 1,
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            _ => 2,
        }
    }
}

/// Iterative wildcard matching with one backtrack point (the last `*`), which is exact for
/// `*`/`?` patterns and linear for the usual ones.
fn matches_tokens(tokens: &[Token], text: &Text<'_>) -> bool {
    let (mut t, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None; // (token after the star, text position)
    loop {
        if t < tokens.len() {
            match &tokens[t] {
                Token::Star => {
                    star = Some((t + 1, i));
                    t += 1;
                    continue;
                }
                Token::One if i < text.len() => {
                    i += text.char_len(i);
                    t += 1;
                    continue;
                }
                Token::Literal(s) if text.starts_with_at(i, s.as_bytes()) => {
                    i += s.len();
                    t += 1;
                    continue;
                }
                _ => {}
            }
        } else if i == text.len() {
            return true;
        }
        // Mismatch: let the last star swallow one more character, or fail.
        match star {
            Some((after, start)) if start < text.len() => {
                let next = start + text.char_len(start);
                star = Some((after, next));
                t = after;
                i = next;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn compile(p: &str) -> Pattern {
        let mut pat = Pattern::default();
        for c in p.chars() {
            pat.push(match c {
                '*' => Token::Star,
                '?' => Token::One,
                c => Token::Literal(c.to_string()),
            });
        }
        pat
    }

    /// The definition, by brute-force recursion.
    fn naive(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|k| naive(rest, &t[k..])),
            Some(('?', rest)) => !t.is_empty() && naive(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && naive(rest, &t[1..]),
        }
    }

    #[test]
    fn examples() {
        let p = compile("arn:aws:iot:*:*:topic/dev/?/x*");
        assert!(p.matches("arn:aws:iot:cn-north-1:1:topic/", "dev/a/x"));
        assert!(p.matches("arn:aws:iot:cn-north-1:1:topic/", "dev/a/xyz/deeper"));
        assert!(!p.matches("arn:aws:iot:cn-north-1:1:topic/", "dev/ab/x"));
        assert!(compile("*").matches("", ""));
        assert!(!compile("?").matches("", ""));
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition(p in "[ab*?/é]{0,8}", t in "[ab/é]{0,10}", split in 0usize..10) {
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            let k = (0..=split.min(t.len())).rev().find(|k| t.is_char_boundary(*k)).unwrap_or(0);
            prop_assert_eq!(compile(&p).matches(&t[..k], &t[k..]), naive(&pc, &tc));
        }
    }
}
