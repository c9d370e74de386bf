//! The AT command line (ExpressLink style): `AT+{COMMAND}[#][ {parameter}]`, case-insensitive
//! command words, escapes `\A` (LF), `\D` (CR) and `\\` in parameters, responses `OK[#] [detail]`
//! or `ERR{code} {MNEMONIC} [detail]` ending in CRLF.

use std::fmt;

/// Longest command line accepted, terminator excluded.
pub const MAX_LINE: usize = 4096;

/// An AT error: code and mnemonic as the module reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AtError {
    /// 1: the line is too long.
    Overflow,
    /// 2: not `AT...`.
    Parse,
    /// 3: unknown command.
    CommandNotFound,
    /// 4: a parameter is missing or extra.
    Parameter,
    /// 5: a backslash escape other than `\A`, `\D`, `\\`.
    InvalidEscape,
    /// 6: not connected.
    NoConnection,
    /// 7: a number out of range (topic index, QoS).
    OutOfRange,
    /// 8: a topic index without a topic.
    ParameterUndefined,
    /// 9: a configuration key that is too long.
    InvalidKeyLength,
    /// 10: a configuration key with characters a key cannot have.
    InvalidKeyName,
    /// 11: an unknown configuration key.
    UnknownKey,
    /// 12: a read-only configuration key.
    KeyReadonly,
    /// 13: a write-only configuration key.
    KeyWriteonly,
    /// 14: the connection attempt failed.
    UnableToConnect,
    /// 18: the command needs the connection closed.
    ActiveConnection,
    /// 25: not allowed now.
    NotAllowed,
    /// 26: a certificate that is not valid.
    InvalidCertificate,
}

impl AtError {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Self::Overflow => 1,
            Self::Parse => 2,
            Self::CommandNotFound => 3,
            Self::Parameter => 4,
            Self::InvalidEscape => 5,
            Self::NoConnection => 6,
            Self::OutOfRange => 7,
            Self::ParameterUndefined => 8,
            Self::InvalidKeyLength => 9,
            Self::InvalidKeyName => 10,
            Self::UnknownKey => 11,
            Self::KeyReadonly => 12,
            Self::KeyWriteonly => 13,
            Self::UnableToConnect => 14,
            Self::ActiveConnection => 18,
            Self::NotAllowed => 25,
            Self::InvalidCertificate => 26,
        }
    }

    /// The mnemonic.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Self::Overflow => "OVERFLOW",
            Self::Parse => "PARSE ERROR",
            Self::CommandNotFound => "COMMAND NOT FOUND",
            Self::Parameter => "PARAMETER ERROR",
            Self::InvalidEscape => "INVALID ESCAPE",
            Self::NoConnection => "NO CONNECTION",
            Self::OutOfRange => "OUT OF RANGE",
            Self::ParameterUndefined => "PARAMETER UNDEFINED",
            Self::InvalidKeyLength => "INVALID KEY LENGTH",
            Self::InvalidKeyName => "INVALID KEY NAME",
            Self::UnknownKey => "UNKNOWN KEY",
            Self::KeyReadonly => "KEY READONLY",
            Self::KeyWriteonly => "KEY WRITEONLY",
            Self::UnableToConnect => "UNABLE TO CONNECT",
            Self::ActiveConnection => "ACTIVE CONNECTION",
            Self::NotAllowed => "NOT ALLOWED",
            Self::InvalidCertificate => "INVALID CERTIFICATE",
        }
    }

    /// The response line: `ERR{code} {MNEMONIC}`.
    pub fn response(self) -> String {
        format!("ERR{} {}\r\n", self.code(), self.mnemonic())
    }
}

impl fmt::Display for AtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERR{} {}", self.code(), self.mnemonic())
    }
}

impl std::error::Error for AtError {}

/// The three forms of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    /// `AT+CONNECT`: wait for the outcome.
    Blocking,
    /// `AT+CONNECT!`: return at once; a CONNECT event follows.
    NonBlocking,
    /// `AT+CONNECT?`: the state.
    Query,
}

/// Which messages `AT+GET` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetFrom {
    /// `AT+GET`: any topic.
    Any,
    /// `AT+GET0`: topics no TopicN names (the claim arrives here).
    Unassigned,
    /// `AT+GET#`: Topic#.
    Topic(u8),
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AT`.
    Attention,
    /// `AT+CONNECT`, `AT+CONNECT!`, `AT+CONNECT?`.
    Connect(ConnectMode),
    /// `AT+DISCONNECT`.
    Disconnect,
    /// `AT+SEND# message` (unescaped).
    Send {
        /// Topic index.
        topic: u8,
        /// The payload.
        message: Vec<u8>,
    },
    /// `AT+GET`, `AT+GET0`, `AT+GET#`.
    Get(GetFrom),
    /// `AT+SUBSCRIBE#`.
    Subscribe(u8),
    /// `AT+UNSUBSCRIBE#`.
    Unsubscribe(u8),
    /// `AT+CONF KEY=value` (value unescaped).
    ConfSet {
        /// Key, as written.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// `AT+CONF? KEY [argument]`.
    ConfGet {
        /// Key, as written.
        key: String,
        /// What else was asked (`AT+CONF? Certificate pem`).
        argument: Option<String>,
    },
    /// `AT+EVENT?`.
    Event,
    /// `AT+RESET`.
    Reset,
    /// `AT+FACTORY_RESET`.
    FactoryReset,
}

/// Decodes the escapes of a parameter.
pub fn unescape(s: &str) -> Result<Vec<u8>, AtError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'A') => out.push(b'\n'),
            Some(b'D') => out.push(b'\r'),
            Some(b'\\') => out.push(b'\\'),
            _ => return Err(AtError::InvalidEscape),
        }
    }
    Ok(out)
}

/// Escapes bytes for a response line (LF, CR and backslash).
pub fn escape(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len());
    for c in String::from_utf8_lossy(data).chars() {
        match c {
            '\n' => out.push_str("\\A"),
            '\r' => out.push_str("\\D"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

/// Splits a trailing topic index off a command word (`SEND1` -> `SEND`, 1).
fn indexed(word: &str) -> (&str, Option<&str>) {
    let split = word.find(|c: char| c.is_ascii_digit()).unwrap_or(word.len());
    let (w, n) = word.split_at(split);
    (w, (!n.is_empty()).then_some(n))
}

fn index(n: Option<&str>) -> Result<u8, AtError> {
    let n = n.ok_or(AtError::Parameter)?;
    match n.parse::<u8>() {
        Ok(i) if (1..=16).contains(&i) => Ok(i),
        _ => Err(AtError::OutOfRange),
    }
}

/// Parses one command line (without its LF/CR terminator).
pub fn parse(line: &str) -> Result<Command, AtError> {
    if line.len() > MAX_LINE {
        return Err(AtError::Overflow);
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (head, rest) = line.split_once(' ').map_or((line, None), |(h, r)| (h, Some(r)));
    let upper = head.to_ascii_uppercase();
    if upper == "AT" {
        return if rest.is_some_and(|r| !r.trim().is_empty()) {
            Err(AtError::Parameter)
        } else {
            Ok(Command::Attention)
        };
    }
    let Some(word) = upper.strip_prefix("AT+") else { return Err(AtError::Parse) };
    let no_param =
        |c: Command| if rest.is_some_and(|r| !r.trim().is_empty()) { Err(AtError::Parameter) } else { Ok(c) };
    match word {
        "CONNECT" => return no_param(Command::Connect(ConnectMode::Blocking)),
        "CONNECT!" => return no_param(Command::Connect(ConnectMode::NonBlocking)),
        "CONNECT?" => return no_param(Command::Connect(ConnectMode::Query)),
        "DISCONNECT" => return no_param(Command::Disconnect),
        "EVENT?" => return no_param(Command::Event),
        "RESET" => return no_param(Command::Reset),
        "FACTORY_RESET" => return no_param(Command::FactoryReset),
        "GET" => return no_param(Command::Get(GetFrom::Any)),
        "GET0" => return no_param(Command::Get(GetFrom::Unassigned)),
        "CONF" => {
            let rest = rest.ok_or(AtError::Parameter)?;
            let (key, value) = rest.split_once('=').ok_or(AtError::Parameter)?;
            return Ok(Command::ConfSet { key: check_key(key)?, value: unescape(value)? });
        }
        "CONF?" => {
            let rest = rest.map(str::trim).filter(|r| !r.is_empty()).ok_or(AtError::Parameter)?;
            let (key, argument) =
                rest.split_once(' ').map_or((rest, None), |(k, a)| (k, Some(a.trim().to_owned())));
            return Ok(Command::ConfGet { key: check_key(key)?, argument });
        }
        _ => {}
    }
    match indexed(word) {
        ("SEND", n) => Ok(Command::Send { topic: index(n)?, message: unescape(rest.unwrap_or(""))? }),
        ("GET", n) => no_param(Command::Get(GetFrom::Topic(index(n)?))),
        ("SUBSCRIBE", n) => no_param(Command::Subscribe(index(n)?)),
        ("UNSUBSCRIBE", n) => no_param(Command::Unsubscribe(index(n)?)),
        _ => Err(AtError::CommandNotFound),
    }
}

fn check_key(key: &str) -> Result<String, AtError> {
    let key = key.trim();
    if key.is_empty() || key.len() > 32 {
        return Err(AtError::InvalidKeyLength);
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AtError::InvalidKeyName);
    }
    Ok(key.to_owned())
}

/// A success line: `OK`, `OK detail`, `OK# detail` (with `#` = a topic index).
pub fn ok(index: Option<u8>, detail: Option<&str>) -> String {
    let mut s = String::from("OK");
    if let Some(i) = index {
        s.push_str(&i.to_string());
    }
    if let Some(d) = detail {
        s.push(' ');
        s.push_str(d);
    }
    s.push_str("\r\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(parse("AT"), Ok(Command::Attention));
        assert_eq!(parse("at+connect"), Ok(Command::Connect(ConnectMode::Blocking)));
        assert_eq!(parse("AT+CONNECT!"), Ok(Command::Connect(ConnectMode::NonBlocking)));
        assert_eq!(parse("AT+Connect?\r"), Ok(Command::Connect(ConnectMode::Query)));
        assert_eq!(
            parse("AT+SEND1 hello world"),
            Ok(Command::Send { topic: 1, message: b"hello world".to_vec() })
        );
        assert_eq!(parse("AT+GET0"), Ok(Command::Get(GetFrom::Unassigned)));
        assert_eq!(parse("AT+GET"), Ok(Command::Get(GetFrom::Any)));
        assert_eq!(parse("AT+GET3"), Ok(Command::Get(GetFrom::Topic(3))));
        assert_eq!(parse("AT+SUBSCRIBE2"), Ok(Command::Subscribe(2)));
        assert_eq!(parse("AT+UNSUBSCRIBE2"), Ok(Command::Unsubscribe(2)));
        assert_eq!(parse("AT+EVENT?"), Ok(Command::Event));
        assert_eq!(parse("AT+FACTORY_RESET"), Ok(Command::FactoryReset));
        assert_eq!(
            parse("AT+CONF Topic1=sensors/a=b"),
            Ok(Command::ConfSet { key: "Topic1".into(), value: b"sensors/a=b".to_vec() })
        );
        assert_eq!(
            parse("AT+CONF? Certificate pem"),
            Ok(Command::ConfGet { key: "Certificate".into(), argument: Some("pem".into()) })
        );
    }

    #[test]
    fn escapes_round_trip_and_bad_ones_are_refused() {
        assert_eq!(
            parse("AT+SEND1 a\\Ab\\Dc\\\\d"),
            Ok(Command::Send { topic: 1, message: b"a\nb\rc\\d".to_vec() })
        );
        assert_eq!(parse("AT+SEND1 oops\\n"), Err(AtError::InvalidEscape));
        assert_eq!(parse("AT+SEND1 trailing\\"), Err(AtError::InvalidEscape));
        let data = b"line1\nline2\r\\end";
        assert_eq!(unescape(&escape(data)).unwrap(), data);
    }

    #[test]
    fn errors_have_the_codes_of_the_reference() {
        assert_eq!(parse("HELLO"), Err(AtError::Parse));
        assert_eq!(parse("AT+FLY"), Err(AtError::CommandNotFound));
        assert_eq!(parse("AT+SEND"), Err(AtError::Parameter));
        assert_eq!(parse("AT+SEND0 x"), Err(AtError::OutOfRange));
        assert_eq!(parse("AT+SEND99 x"), Err(AtError::OutOfRange));
        assert_eq!(parse("AT+CONNECT now"), Err(AtError::Parameter));
        assert_eq!(parse("AT+CONF Topic1"), Err(AtError::Parameter));
        assert_eq!(parse("AT+CONF Bad-Key=1"), Err(AtError::InvalidKeyName));
        assert_eq!(parse(&format!("AT+CONF {}=1", "K".repeat(33))), Err(AtError::InvalidKeyLength));
        assert_eq!(parse(&format!("AT+SEND1 {}", "x".repeat(MAX_LINE))), Err(AtError::Overflow));
        assert_eq!(AtError::UnableToConnect.response(), "ERR14 UNABLE TO CONNECT\r\n");
        assert_eq!(AtError::InvalidEscape.response(), "ERR5 INVALID ESCAPE\r\n");
        assert_eq!(ok(None, Some("1 CONNECTED")), "OK 1 CONNECTED\r\n");
        assert_eq!(ok(Some(2), Some("payload")), "OK2 payload\r\n");
    }
}
