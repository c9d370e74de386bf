//! Decoding and encoding of MQTT packets.
//!
//! [`decode`] takes the bytes received so far and returns a packet and its length, `None` when
//! more bytes are needed, or an error with the reason code to close the connection with. The
//! packet size limit is checked as soon as the fixed header is complete, before the body arrives.

mod decode;
mod encode;
pub(crate) mod wire;

pub use decode::decode;
pub use encode::encode;

use crate::reason::ReasonCode;
use crate::topic::TopicError;

/// Why bytes are not a valid packet. [`DecodeError::reason_code`] says how to close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet is larger than the limit.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Size announced by the fixed header.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A variable byte integer longer than four bytes or not minimally encoded.
    #[error("malformed variable byte integer")]
    MalformedVarint,
    /// A field runs past the end of the packet.
    #[error("packet ends inside a field")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("unexpected bytes after the last field")]
    TrailingBytes,
    /// Packet type 0, or AUTH in MQTT 3.1.1.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// Fixed-header flags other than those the packet type requires.
    #[error("invalid fixed header flags for packet type {0}")]
    BadFlags(u8),
    /// QoS 3, or a QoS flag where none is allowed.
    #[error("invalid QoS")]
    InvalidQoS,
    /// A string that is not UTF-8 or contains U+0000.
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The CONNECT protocol name is not "MQTT".
    #[error("protocol name is not MQTT")]
    BadProtocolName,
    /// A protocol level other than 4 (3.1.1) or 5.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT flags that contradict each other or set the reserved bit.
    #[error("invalid CONNECT flags")]
    BadConnectFlags,
    /// A property identifier the specification does not define.
    #[error("unknown property identifier")]
    UnknownProperty,
    /// A property not allowed in this packet.
    #[error("property not allowed in this packet")]
    PropertyNotAllowed,
    /// A property given twice.
    #[error("duplicate property")]
    DuplicateProperty,
    /// A property value out of its range.
    #[error("invalid property value")]
    BadPropertyValue,
    /// More user properties than this implementation accepts.
    #[error("too many user properties")]
    TooManyUserProperties,
    /// Packet identifier 0.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A reason code not defined for this packet.
    #[error("invalid reason code {0:#04x}")]
    BadReasonCode(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without any topic filter.
    #[error("no topic filters")]
    NoTopicFilters,
    /// Subscription options with reserved bits or retain handling 3.
    #[error("invalid subscription options")]
    BadSubscriptionOptions,
    /// An invalid topic filter.
    #[error("invalid topic filter: {0}")]
    BadTopicFilter(TopicError),
    /// An invalid topic name in PUBLISH.
    #[error("invalid topic name: {0}")]
    BadTopicName(TopicError),
}

impl DecodeError {
    /// The MQTT 5 reason code to send in DISCONNECT (or CONNACK) before closing.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Self::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            Self::PropertyNotAllowed
            | Self::DuplicateProperty
            | Self::BadPropertyValue
            | Self::ZeroPacketId
            | Self::NoTopicFilters => ReasonCode::ProtocolError,
            Self::BadTopicName(_) => ReasonCode::TopicNameInvalid,
            Self::TooManyUserProperties => ReasonCode::ImplementationSpecificError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet exceeds the largest remaining length (268,435,455 bytes).
    #[error("packet too large to encode")]
    TooLarge,
    /// A string or binary field over 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// QoS > 0 without a packet identifier, or QoS 0 with one.
    #[error("packet identifier does not fit the QoS")]
    PacketIdMismatch,
    /// A packet or field the chosen protocol version does not have.
    #[error("not available in MQTT 3.1.1")]
    NotInV311,
}
