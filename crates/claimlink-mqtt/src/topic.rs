//! Topic names and topic filters (MQTT 5 section 4.7, 3.1.1 section 4.7) and their matching.

use std::fmt;

/// Longest topic name or filter the protocol can carry (a two-byte length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty (only allowed for a PUBLISH that carries a topic alias, handled by the codec).
    #[error("topic is empty")]
    Empty,
    /// Longer than 65,535 bytes.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000.
    #[error("topic contains a null character")]
    NullCharacter,
    /// A topic name with `+` or `#`.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` sharing a level with other characters.
    #[error("topic filter has a misplaced wildcard")]
    MisplacedWildcard,
    /// `$share/` without a valid share name and filter.
    #[error("malformed shared subscription")]
    BadSharedSubscription,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// A topic name: what a PUBLISH is sent to. No wildcards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    /// Validates a topic name.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated levels.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether the name is reserved for the server (`$SYS/...`, `$aws/...`).
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

/// A topic filter: what a SUBSCRIBE asks for. `+` matches one level, `#` the rest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

impl TopicFilter {
    /// Validates a topic filter, including the `$share/{name}/{filter}` form.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        let plain = match s.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest.split_once('/').ok_or(TopicError::BadSharedSubscription)?;
                if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                    return Err(TopicError::BadSharedSubscription);
                }
                filter
            }
            None => s.as_str(),
        };
        check_wildcards(plain)?;
        Ok(Self(s))
    }

    /// The text, including any `$share/{name}/` prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For `$share/{group}/{filter}`: the group and the filter.
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix("$share/").and_then(|rest| rest.split_once('/'))
    }

    /// The filter that topic names are matched against (without a `$share/` prefix).
    pub fn pattern(&self) -> &str {
        self.shared().map_or(&self.0, |(_, f)| f)
    }

    /// Whether the filter contains `+` or `#`.
    pub fn has_wildcards(&self) -> bool {
        self.pattern().contains(['+', '#'])
    }

    /// Whether `name` matches this filter. Wildcards at the first level never match names that
    /// start with `$` (section 4.7.2).
    pub fn matches(&self, name: &TopicName) -> bool {
        matches_pattern(self.pattern(), name.as_str())
    }
}

fn check_wildcards(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let bad_hash = level.contains('#') && (level != "#" || levels.peek().is_some());
        let bad_plus = level.contains('+') && level != "+";
        if bad_hash || bad_plus {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Matches a valid filter pattern against a valid topic name.
pub fn matches_pattern(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut names = name.split('/');
    for f in filter.split('/') {
        match (f, names.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(n)) if f == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

macro_rules! text_traits {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
text_traits!(TopicName);
text_traits!(TopicFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(filter: &str, name: &str) -> bool {
        TopicFilter::new(filter).unwrap().matches(&TopicName::new(name).unwrap())
    }

    #[test]
    fn specification_examples() {
        // Section 4.7.1.2
        for f in ["sport/tennis/player1/#", "sport/#", "#"] {
            assert!(m(f, "sport/tennis/player1"), "{f}");
        }
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(m("sport/#", "sport"));
        // Section 4.7.1.3
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        // Section 4.7.2
        assert!(!m("#", "$SYS/broker/clients"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/broker"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn invalid_filters_and_names_are_refused() {
        for bad in ["sport/tennis#", "sport/tennis/#/ranking", "sport+", "+a/b", "#/"] {
            assert_eq!(TopicFilter::new(bad), Err(TopicError::MisplacedWildcard), "{bad}");
        }
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(TopicName::new("a".repeat(MAX_TOPIC_LEN + 1)), Err(TopicError::TooLong));
        for bad in ["$share/", "$share/g", "$share//a", "$share/g+/a", "$share/g/"] {
            assert_eq!(TopicFilter::new(bad), Err(TopicError::BadSharedSubscription), "{bad}");
        }
    }

    #[test]
    fn shared_subscriptions_match_on_their_inner_filter() {
        let f = TopicFilter::new("$share/workers/jobs/+").unwrap();
        assert_eq!(f.shared(), Some(("workers", "jobs/+")));
        assert!(f.matches(&TopicName::new("jobs/1").unwrap()));
        assert!(!f.matches(&TopicName::new("$share/workers/jobs/1").unwrap()));
    }

    /// The naive reference: recursive matching over level lists, written from the definitions.
    fn reference(filter: &[&str], name: &[&str], first: bool) -> bool {
        if first
            && name.first().is_some_and(|n| n.starts_with('$'))
            && filter.first().is_some_and(|f| *f == "+" || *f == "#")
        {
            return false;
        }
        match (filter.split_first(), name.split_first()) {
            (None, None) => true,
            (Some((&"#", _)), _) => true,
            (Some((&"+", fr)), Some((_, nr))) => reference(fr, nr, false),
            (Some((f, fr)), Some((n, nr))) => f == n && reference(fr, nr, false),
            _ => false,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just(String::new()), Just("$s".to_owned())]
    }

    fn filter_level() -> impl Strategy<Value = String> {
        prop_oneof![level(), Just("+".to_owned())]
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_naive_reference(
            name in prop::collection::vec(level(), 1..6),
            filter in prop::collection::vec(filter_level(), 1..6),
            hash in any::<bool>(),
        ) {
            let mut filter = filter;
            if hash {
                filter.push("#".to_owned());
            }
            let (n, f) = (name.join("/"), filter.join("/"));
            prop_assume!(!n.is_empty() && !f.is_empty());
            let name_t = TopicName::new(n.clone()).unwrap();
            let filter_t = TopicFilter::new(f.clone()).unwrap();
            let fl: Vec<&str> = f.split('/').collect();
            let nl: Vec<&str> = n.split('/').collect();
            prop_assert_eq!(filter_t.matches(&name_t), reference(&fl, &nl, true), "{} vs {}", f, n);
        }

        #[test]
        fn a_filter_without_wildcards_matches_exactly_itself(name in prop::collection::vec(level(), 1..6)) {
            let n = name.join("/");
            prop_assume!(!n.is_empty());
            let f = TopicFilter::new(n.clone()).unwrap();
            prop_assert!(f.matches(&TopicName::new(n).unwrap()));
        }
    }
}
